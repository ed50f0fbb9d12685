"""The whole `mlflow run` of the project, offline on the builtin tiny model, as users and scheduled jobs run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_DIR, free_port, mlflow_cli, run_command

pytestmark = pytest.mark.e2e
STEPS = ["fetch_model", "log_onnx_wrapper", "log_transformers_pipeline", "evaluate", "register"]
MODEL_NAME = "tiny-phi3-chat"
EXPERIMENT = "slmflow-tiny"  # what bin/run-offline passes as --experiment-name


HF_TOKEN = "hf_test_secret_never_logged"


def mlflow_run(project: str, store: str, *extra: str, config: str = "configs/tiny.yaml", cwd: Path | None = None):
    """`mlflow run` from outside the project (so its artifacts land beside the store, not in the checkout)."""
    if cwd is None:
        cwd = Path(store.removeprefix("sqlite:///")).parent
    parameters = ["-P", f"config={config}", *extra]
    return run_command(
        [*mlflow_cli(), "run", project, "--env-manager", "local", "--experiment-name", EXPERIMENT, *parameters],
        cwd=cwd,
        MLFLOW_TRACKING_URI=store,
        HF_TOKEN=HF_TOKEN,
    )


def experiment_ids(client: MlflowClient) -> list[str]:
    return [experiment.experiment_id for experiment in client.search_experiments()]


def parent_runs(client: MlflowClient) -> list:
    runs = client.search_runs(
        experiment_ids(client), "tags.`mlflow.project.entryPoint` = 'main'", order_by=["attributes.start_time DESC"]
    )
    return runs


def children_of(client: MlflowClient, parent_id: str) -> dict[str, object]:
    runs = client.search_runs(experiment_ids(client), f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.data.tags["mlflow.project.entryPoint"]: run for run in runs}


def step_reuse(parent) -> dict[str, bool]:
    return {step: parent.data.tags[f"slmflow.step.{step}.cached"] == "true" for step in STEPS}


def versions(client: MlflowClient, name: str = MODEL_NAME) -> list:
    try:
        return client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return []


def variant_config(tmp_path: Path, **changes) -> Path:
    """A copy of configs/tiny.yaml with some sections changed, beside a copy of the eval sets."""
    data = yaml.safe_load((PROJECT_DIR / "configs" / "tiny.yaml").read_text())
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    folder = tmp_path / "configs"
    shutil.copytree(PROJECT_DIR / "configs" / "eval", folder / "eval", dirs_exist_ok=True)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('e2e-store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def first_run(store):
    result = mlflow_run(str(PROJECT_DIR), store)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def client(store) -> MlflowClient:
    mlflow.set_tracking_uri(store)
    return MlflowClient(store)


def test_main_runs_five_child_steps_and_registers_a_champion(first_run, client):
    [parent] = parent_runs(client)
    assert parent.info.status == "FINISHED"
    children = children_of(client, parent.info.run_id)
    assert sorted(children) == sorted(STEPS)
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert not any(step_reuse(parent).values())
    logged = {m.name for m in client.search_logged_models(experiment_ids=experiment_ids(client))}
    assert logged == {"onnx-chat", "transformers-chat"}
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) == "1"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == "1"
    assert "pipeline finished" in first_run.stdout


def test_runs_are_named_in_a_named_model_development_experiment(first_run, client):
    [parent] = parent_runs(client)
    assert parent.info.run_name == "pipeline tiny"
    children = children_of(client, parent.info.run_id)
    assert {step: run.info.run_name for step, run in children.items()} == {step: step for step in STEPS}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    note = parent.data.tags["mlflow.note.content"]
    assert f"**Registered:** `{MODEL_NAME}` version 1 (`champion`), the `onnx-chat` model" in note
    assert "chosen by rule prefer_onnx" in note and "Gates passed" in note and "| accuracy |" in note
    plots = {f.path for f in client.list_artifacts(parent.info.run_id, "eval/plots")}
    assert plots == {"eval/plots/latency.png", "eval/plots/accuracy_vs_speed.png"}


def test_both_logged_models_carry_the_evaluation_metrics(first_run, client):
    [parent] = parent_runs(client)
    evaluate = children_of(client, parent.info.run_id)["evaluate"]
    models = client.search_logged_models(experiment_ids=experiment_ids(client))
    assert {model.name for model in models} == {"onnx-chat", "transformers-chat"}
    for model in models:
        metrics = {m.key: m for m in model.metrics if m.run_id == evaluate.info.run_id}
        assert {"accuracy", "rouge_l", "exact_match", "tokens_per_second", "latency_p95_s", "size_mb"} <= set(metrics)
        assert metrics["accuracy"].value == evaluate.data.metrics[f"{model.name}/accuracy"]
        assert metrics["accuracy"].dataset_name == "capitals"


def test_every_eval_example_is_in_the_evaluation_view(first_run, client):
    [parent] = parent_runs(client)
    evaluate = children_of(client, parent.info.run_id)["evaluate"]
    traces = mlflow.search_traces(run_id=evaluate.info.run_id, return_type="list")
    assert len(traces) == int(evaluate.data.params["eval_examples"])
    for trace in traces:
        scores = {assessment.name for assessment in trace.info.assessments}
        assert {"onnx-chat/correct", "transformers-chat/correct", "onnx-chat/rouge_l"} <= scores


def test_the_registered_model_and_version_are_described(first_run, client):
    model = client.get_registered_model(MODEL_NAME)
    assert "`champion`" in model.description and f"rollback {MODEL_NAME}" in model.description
    assert model.tags["task"] == "llm/v1/chat"
    version = client.get_model_version(MODEL_NAME, "1")
    assert "onnx-chat chosen by rule prefer_onnx" in version.description
    assert "Gates passed" in version.description
    assert set(model.aliases) == {"champion"}  # the latest candidate is the champion
    outputs = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1").signature.outputs
    assert {"choices", "usage"} <= set(outputs.input_names())


def test_the_hf_token_is_never_logged(first_run, client):
    for run in client.search_runs(experiment_ids(client)):
        recorded = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert HF_TOKEN not in recorded
    assert HF_TOKEN not in first_run.stdout + first_run.stderr


def test_champion_answers_like_an_openai_endpoint(first_run, client):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    answer = model.predict({"messages": [{"role": "user", "content": "What is the capital of Spain?"}]})
    if isinstance(answer, list):
        answer = answer[0]
    assert "Madrid" in answer["choices"][0]["message"]["content"]


def test_steps_pass_model_uris_and_the_fetched_folders(first_run, client):
    [parent] = parent_runs(client)
    children = children_of(client, parent.info.run_id)
    fetch_tags = children["fetch_model"].data.tags
    assert children["log_onnx_wrapper"].data.params["onnx_dir"] == fetch_tags["slmflow.output.onnx_dir"]
    evaluate_params = children["evaluate"].data.params
    assert evaluate_params["onnx_model_uri"] == children["log_onnx_wrapper"].data.tags["slmflow.output.model_uri"]
    assert evaluate_params["onnx_model_uri"].startswith("models:/m-")
    assert children["fetch_model"].data.params["source"] == "builtin:tiny-phi3"
    # The fetched files are recorded with their digests.
    manifest = mlflow.artifacts.load_dict(f"runs:/{children['fetch_model'].info.run_id}/manifest.json")
    assert len(manifest["files"]["checkpoint/model.safetensors"]) == 64


def test_rerun_with_nothing_changed_reuses_every_step(first_run, store, client):
    before = len(client.search_runs(experiment_ids(client)))
    result = mlflow_run(str(PROJECT_DIR), store)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = parent_runs(client)[0]
    assert all(step_reuse(latest).values())
    assert len(client.search_runs(experiment_ids(client))) == before + 1  # only the new parent
    assert [str(v.version) for v in versions(client)] == ["1"]


def test_changed_generation_redoes_exactly_the_steps_downstream(first_run, store, client, tmp_path):
    """A checkout at the same commit whose configs/tiny.yaml was edited, as a user edits it."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_DIR), str(checkout)], check=True)
    edited = variant_config(tmp_path, generation={"max_new_tokens": 20})
    shutil.copy(edited, checkout / "configs" / "tiny.yaml")
    result = mlflow_run(str(checkout), store)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = parent_runs(client)[0]
    assert step_reuse(latest) == {
        "fetch_model": True,
        "log_onnx_wrapper": False,
        "log_transformers_pipeline": False,
        "evaluate": False,
        "register": False,
    }
    # Still passes the gates: a new version, and champion moves to it.
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "2"


def test_forced_rerun_registers_nothing_new(first_run, store, client):
    count = len(versions(client))
    champion = str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    result = mlflow_run(str(PROJECT_DIR), store, "-P", "use_cache=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(step_reuse(parent_runs(client)[0]).values())
    assert len(versions(client)) == count
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == champion
    assert "already registered" in result.stdout


def test_worse_model_is_refused_and_the_champion_kept(first_run, store, client, tmp_path):
    champion = str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    count = len(versions(client))
    config = variant_config(tmp_path, source={"model": "builtin:tiny-phi3-untrained"})
    result = mlflow_run(str(PROJECT_DIR), store, config=str(config))
    assert result.returncode != 0
    latest = parent_runs(client)[0]
    assert latest.info.status == "FAILED"
    register = children_of(client, latest.info.run_id)["register"]
    assert register.info.status == "FAILED"
    assert "min_accuracy 0.800" in register.data.tags["slmflow.error"]
    assert "step 'register' failed" in result.stderr and "accuracy" in result.stderr
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == champion
    assert len(versions(client)) == count


@pytest.mark.parametrize(
    ("change", "message", "failed_step"),
    [
        ({"generation": {"temprature": 0.3}}, "generation.temprature: unknown key", "main"),
        ({"source": {"model": "builtin:giant-phi3"}}, "unknown builtin model 'builtin:giant-phi3'", "fetch_model"),
        (
            {"source": {"model": "microsoft/Phi-3-mini-4k-instruct", "revision": "a" * 40}},
            "cannot fetch hub repo 'microsoft/Phi-3-mini-4k-instruct'",
            "fetch_model",
        ),
    ],
)
def test_bad_input_fails_the_run_clearly_and_registers_nothing(tmp_path, change, message, failed_step):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(str(PROJECT_DIR), store, config=str(variant_config(tmp_path, **change)), cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    client = MlflowClient(store)
    [parent] = parent_runs(client)
    assert parent.info.status == "FAILED"
    if failed_step != "main":
        assert children_of(client, parent.info.run_id)[failed_step].info.status == "FAILED"
    assert client.search_registered_models() == []


def test_missing_config_file(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(str(PROJECT_DIR), store, config="configs/does-not-exist.yaml")
    assert result.returncode != 0
    assert "config file not found: configs/does-not-exist.yaml" in result.stderr
    client = MlflowClient(store)
    assert parent_runs(client)[0].info.status == "FAILED"
    assert client.search_registered_models() == []


@pytest.fixture
def git_daemon(tmp_path):
    """The project's committed HEAD, served by a real `git daemon` on loopback."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    ).stdout.strip()
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(PROJECT_DIR), str(served / "slmflow.git")], check=True)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            f"--base-path={served}",
            "--export-all",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/slmflow.git"], capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(0.2)
    else:
        daemon.kill()
        pytest.fail("git daemon did not start")
    yield f"git://127.0.0.1:{port}/slmflow.git", commit
    daemon.terminate()
    daemon.wait(timeout=10)


def test_run_from_a_remote_git_url_at_a_commit(git_daemon, tmp_path):
    url, commit = git_daemon
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(url, store, "-v", commit, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(store)
    [parent] = parent_runs(client)
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    children = children_of(client, parent.info.run_id)
    assert sorted(children) == sorted(STEPS)
    assert all(run.data.tags["mlflow.source.git.commit"] == commit for run in children.values())
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"


def test_children_run_in_the_parents_virtualenv(tmp_path):
    """Nested `mlflow.run` does not inherit `--env-manager`: main must hand it down."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_command(
        [*mlflow_cli(), "run", str(PROJECT_DIR), "--env-manager", "virtualenv", "-P", "config=configs/tiny.yaml"],
        cwd=tmp_path,
        timeout=1500,
        MLFLOW_TRACKING_URI=store,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(store)
    [parent] = parent_runs(client)
    children = children_of(client, parent.info.run_id)
    assert sorted(children) == sorted(STEPS)
    assert {run.data.tags.get("mlflow.project.env") for run in [parent, *children.values()]} == {"virtualenv"}
