"""The schedule's deploy files: there is no Docker daemon or cluster here, so check what they declare."""

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
