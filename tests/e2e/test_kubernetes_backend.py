"""MLflow's own Kubernetes backend builds the Job for `batch_score` from deploy/kubernetes/.

There is no cluster and no Docker daemon here: only the calls that would reach them are replaced
(`docker info`, the Docker client, loading a kube config, creating the Job), as MLflow's own tests
do. Everything else (reading the MLproject and kubernetes_config.json, building the image's context,
the entry point's command, the Job definition from the template) is MLflow's code on our files.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from unittest import mock

import docker
import kubernetes
import mlflow
import pytest
import yaml
from mlflow.projects._project_spec import load_project

from steps.batch_score import parse_arguments
from testkit.processes import PROJECT_DIR

K8S_DIR = PROJECT_DIR / "deploy" / "kubernetes"
BENCHMARK_RESULTS = PROJECT_DIR / "benchmarks" / "results" / "batch_score.json"
TRACKING_URI = "https://mlflow.example.com"
IMAGE_DIGEST = "sha256:" + "ab" * 32


class FakeDocker:
    """Stands in for the Docker daemon: keeps the build context MLflow sends, 'pushes' without a registry."""

    def __init__(self) -> None:
        self.context: dict[str, bytes] = {}
        self.built_tag = ""
        self.images = mock.MagicMock()
        self.images.build.side_effect = self._build
        self.images.push.return_value = iter([{"status": "Pushed"}])
        self.images.get_registry_data.return_value.id = IMAGE_DIGEST

    def _build(self, tag, fileobj, **kwargs):
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(fileobj.read()))) as archive:
            self.context = {
                member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()
            }
        self.built_tag = tag
        return mock.MagicMock(id="sha256:built", tags=[tag]), []


@pytest.fixture
def submitted_job(monkeypatch):
    """Run `mlflow run deploy/kubernetes -e batch_score --backend kubernetes --build-image` up to the Job."""
    fake_docker = FakeDocker()
    created = {}
    monkeypatch.chdir(PROJECT_DIR)  # kubernetes_config.json names the template relative to the repository
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", TRACKING_URI)
    monkeypatch.setattr("mlflow.projects.docker.validate_docker_installation", lambda: None)
    monkeypatch.setattr(docker, "from_env", lambda **kwargs: fake_docker)
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda context=None: created.update(context=context))
    monkeypatch.setattr(
        kubernetes.client.BatchV1Api,
        "create_namespaced_job",
        lambda self, namespace, body, pretty: created.update(namespace=namespace, body=body),
    )
    parameters = {
        "model_uri": "models:/tiny-phi3-chat@champion",
        "input": "s3a://bucket/requests.jsonl",
        "output": "s3a://bucket/answers.parquet",
        "max_tokens": "32",
    }
    submitted = mlflow.projects.run(
        str(K8S_DIR),
        entry_point="batch_score",
        parameters=parameters,
        backend="kubernetes",
        backend_config=str(K8S_DIR / "kubernetes_config.json"),
        build_image=True,
        synchronous=False,
    )
    return submitted, created, fake_docker, parameters


def test_the_job_runs_the_entry_point_with_tracking_credentials_from_the_secret(submitted_job):
    submitted, created, _, parameters = submitted_job
    job = created["body"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert created["context"] == "slmflow" and created["namespace"] == "mlflow"
    assert job["metadata"]["name"].startswith("slmflow-")

    # The command is the entry point's, and the step reads it back as given (MLflow passes every
    # argument shell-quoted without a shell: `local[2]` arrives as `'local[2]'`, "" as `''`).
    assert container["command"][:3] == ["python", "-m", "steps.batch_score"]
    args = parse_arguments(container["command"][3:])
    assert args.model_uri == parameters["model_uri"] and args.input == parameters["input"]
    assert args.output == parameters["output"] and args.spark_master == "local[2]"
    assert (args.max_tokens, args.temperature, args.batch_size) == ("32", "", "8")

    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == TRACKING_URI
    assert env["MLFLOW_RUN_ID"]["value"] == submitted.run_id
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "slmflow-tracking", "key": key}}}
    assert not any("value" in item and "password" in item["name"].lower() for item in container["env"])

    template = yaml.safe_load((K8S_DIR / "job-template.yaml").read_text())
    resources = template["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert container["resources"] == resources
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    # Sized from measurement: the Spark JVM and a model copy in each of local[2]'s Python workers fit.
    measured = {row["model"]: row for row in json.loads(BENCHMARK_RESULTS.read_text())}["bench-phi3-100m"]
    needed_mb = measured["spark_jvm_peak_rss_mb"] + 2 * max(measured["spark_python_worker_peak_rss_mb"])
    assert resources["requests"]["memory"].endswith("Mi") and int(resources["requests"]["memory"][:-2]) > needed_mb


def test_the_image_is_the_base_image_plus_this_commit_of_the_project(submitted_job):
    submitted, created, fake_docker, _ = submitted_job
    container = created["body"]["spec"]["template"]["spec"]["containers"][0]
    assert fake_docker.built_tag.startswith("registry.example.com/slmflow/project:")
    assert container["image"] == f"{fake_docker.built_tag}@{IMAGE_DIGEST}"
    context = "mlflow-project-docker-build-context"
    dockerfile = fake_docker.context[f"{context}/Dockerfile.mlflow-autogenerated"].decode()
    assert dockerfile.split()[:2] == ["FROM", load_project(str(K8S_DIR)).docker_env["image"]]
    assert "WORKDIR /mlflow/projects/code/" in dockerfile
    # The links to the code are followed: the image holds the files, as in the repository.
    for path in ("steps/batch_score.py", "slmflow/batch/spark.py", "slmflow/chat/onnx/engine.py", "configs/tiny.yaml"):
        assert fake_docker.context[f"{context}/{path}"] == (PROJECT_DIR / path).read_bytes()
    assert mlflow.get_run(submitted.run_id).data.tags["mlflow.project.backend"] == "kubernetes"


def test_the_kubernetes_project_has_the_root_projects_entry_points():
    root, variant = load_project(str(PROJECT_DIR)), load_project(str(K8S_DIR))
    assert variant.docker_env and variant.env_type != "conda_env"
    assert {name: (e.parameters.keys(), e.command) for name, e in variant._entry_points.items()} == {
        name: (e.parameters.keys(), e.command) for name, e in root._entry_points.items()
    }


def test_the_deploy_folder_links_to_the_code_rather_than_copying_it():
    for name in ("slmflow", "steps", "configs"):
        link = K8S_DIR / name
        assert link.is_symlink() and link.resolve() == (PROJECT_DIR / name).resolve()
    assert Path(K8S_DIR / "kubernetes_config.json").exists()
