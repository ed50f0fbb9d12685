"""The deploy files: there is no Docker daemon or cluster here, so check what they declare."""

import json

import yaml

from testkit.processes import PROJECT_DIR

DEPLOY = PROJECT_DIR / "deploy"


def test_cronjob_never_overlaps_and_takes_credentials_from_secrets():
    cronjob = yaml.safe_load((DEPLOY / "kubernetes" / "cronjob.yaml").read_text())
    assert cronjob["kind"] == "CronJob" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    for secret in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"):
        assert "value" not in env[secret] and "secretKeyRef" in env[secret]["valueFrom"], secret
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("https://")
    url, ref = container["args"]
    assert url.endswith(".git") and ref


def test_image_runs_the_scheduled_wrapper_with_cpu_torch_only():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["bin/scheduled-run"]' in dockerfile
    assert "--index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "grep '^torch==' requirements.txt" in dockerfile  # the one pin, not a second copy of it
    assert (PROJECT_DIR / "bin" / "scheduled-run").stat().st_mode & 0o111


# The OpenAI-compatible server on a cluster: server.yaml (Deployment, Service, HPA) and the adapter rule.

QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def mebibytes(quantity: str) -> float:
    return float(quantity[:-2]) * QUANTITY[quantity[-2:]] / 2**20


def parse_args_of(container: dict):
    """The container's arguments as the server's CLI reads them (an unknown flag fails here)."""
    from slmflow.serve import parse_args

    return parse_args(container["args"])


def server_manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "server.yaml").read_text())}


def test_the_server_deployment_runs_the_cli_with_probes_and_secrets():
    from slmflow.policy import RequestLimits
    from slmflow.serve import API_KEY_ENV, WEBHOOK_SECRET_ENV

    pod = server_manifests()["Deployment"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "slmflow.serve"]
    args = parse_args_of(container)
    assert args.model_uri[0].endswith("@champion") and args.host == "0.0.0.0" and args.follow_interval > 0
    [port] = container["ports"]
    assert port["containerPort"] == args.port == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    env = {item["name"]: item for item in container["env"]}
    for secret in (API_KEY_ENV, WEBHOOK_SECRET_ENV, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[secret] and "secretKeyRef" in env[secret]["valueFrom"], secret
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("https://")
    assert pod["spec"]["terminationGracePeriodSeconds"] > RequestLimits().timeout_seconds


def test_the_server_memory_is_sized_from_the_measured_peak_rss():
    """Measured with the Deployment's own batch size and generator groups, every group full; the limit also
    holds a second version loading while the first serves (following the champion)."""
    measured = json.loads((PROJECT_DIR / "benchmarks" / "results" / "server_peak_rss.json").read_text())
    [container] = server_manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = parse_args_of(container)
    [server] = [s for s in measured["servers"] if s["max_groups"] == args.max_groups]
    assert server["max_batch_size"] == args.max_batch_size
    assert max(wave["clients"] for wave in server["waves"]) >= args.max_batch_size * args.max_groups
    peak = max(wave["vm_hwm_mib"] for wave in server["waves"])
    resources = container["resources"]
    requested, limit = mebibytes(resources["requests"]["memory"]), mebibytes(resources["limits"]["memory"])
    assert peak < requested and peak + server["loaded_rss_mib"] < limit


def test_the_service_and_autoscaler_target_the_deployment_on_the_exported_queue_depth():
    manifests = server_manifests()
    deployment, service, autoscaler = (manifests[kind] for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels == deployment["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    spec = autoscaler["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    [metric] = spec["metrics"]
    name = metric["pods"]["metric"]["name"]
    served = "\n".join(path.read_text() for path in (PROJECT_DIR / "slmflow" / "serving").rglob("*.py"))
    assert f'"{name}"' in served  # the gauge the server's /metrics exports
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < parse_args_of(container).max_queue
    adapter = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-adapter.yaml").read_text())
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["as"] == name
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}  # a pods metric, per pod
