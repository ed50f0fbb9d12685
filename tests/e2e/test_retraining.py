"""Scheduled retraining through `mlflow run` on the builtin tiny model, against the team's tracking server.

One job fine-tunes (TRL + peft) and hands the merged checkpoint on by URI; both flavors are built from it and
gated. Then as a schedule runs it: the same data reuses every step; a job killed during training leaves no
finished finetune run and nothing registered; new data trains again and the gates decide.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from slmflow.pipeline.contract import STEPS as CONTRACT
from testkit.processes import PROJECT_DIR, kill_job_when
from tests.e2e.test_pipeline_runs import Team, aliases, clone, mlflow_run, running_step

# A fine-tune, two builds and two evaluations per job: longer than the default per-test timeout on 2 shared cores.
pytestmark = pytest.mark.timeout(3600)

STEPS = ["fetch_model", "finetune", "log_onnx_wrapper", "log_transformers_pipeline", "evaluate", "register"]
EXPERIMENT = "scheduled-retraining"
CONFIG = "configs/tiny-retrain.yaml"
MODEL_NAME = yaml.safe_load((PROJECT_DIR / CONFIG).read_text())["registry"]["model_name"]
DATASET = PROJECT_DIR / "configs" / "train" / "capitals-rephrased.jsonl"


def step_reuse(parent) -> dict[str, bool]:
    return {step: parent.data.tags[f"slmflow.step.{step}.cached"] == "true" for step in STEPS}


def retrain_config(folder: Path, extra_rows: list[dict], **training) -> Path:
    """configs/tiny-retrain.yaml beside a copy of its data, with rows added to the training set (new data) and
    `training` settings changed."""
    configs = folder / "configs"
    shutil.copytree(PROJECT_DIR / "configs" / "eval", configs / "eval")
    shutil.copytree(PROJECT_DIR / "configs" / "train", configs / "train")
    with (configs / "train" / DATASET.name).open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in extra_rows)
    config = yaml.safe_load((PROJECT_DIR / CONFIG).read_text())
    config["training"].update(training)
    path = configs / "retrain.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def capital_row(country: str, capital: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Could you name the capital city of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {capital}."},
        ]
    }


@pytest.fixture(scope="module")
def team(tracking_server, tmp_path_factory, cache_dir) -> Team:
    return Team(tracking_server, tmp_path_factory.mktemp("retraining"), EXPERIMENT)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return clone(tmp_path_factory.mktemp("retrain-machine") / "slmflow")


def run_job(team: Team, checkout: Path, config: str | Path = CONFIG) -> subprocess.CompletedProcess:
    return team.run(str(checkout), config=str(config), timeout=3000)


@pytest.fixture(scope="module")
def first_run(team, checkout):
    result = run_job(team, checkout)
    team.assert_ok(result)
    return team.parent_of(result.stdout + result.stderr)


def test_the_retraining_pipeline_runs_six_steps_and_registers_a_fine_tuned_champion(first_run, team):
    children = team.children(first_run)
    assert sorted(children) == sorted(STEPS)
    assert all(run.info.status == "FINISHED" for run in children.values())
    # Parent and six children: the Trainer's MLflow callback started no run of its own.
    assert len(team.client.search_runs([team.experiment_id])) == 1 + len(STEPS)
    version = team.client.get_model_version(MODEL_NAME, "1")
    assert aliases(team.client, MODEL_NAME) == {"champion": "1"}
    assert version.tags["gates"] == "passed"
    digest = hashlib.sha256(DATASET.read_bytes()).hexdigest()
    assert version.tags["dataset_digest"] == digest  # part of the registered identity
    assert version.tags["finetune_run_id"] == children["finetune"].info.run_id
    assert version.tags["source_revision"] == children["finetune"].data.tags["slmflow.output.source_revision"]
    assert f"training set of 40 rows (sha256 {digest})" in version.description
    assert "steps, final training loss" in version.description


def test_finetune_records_loss_history_timings_the_adapter_and_the_dataset(first_run, team):
    finetune = team.children(first_run)["finetune"]
    losses = team.client.get_metric_history(finetune.info.run_id, "loss")
    assert len(losses) == finetune.data.metrics["steps"] >= 2  # logging_steps 1: one point per step
    assert [m.step for m in losses] == sorted(m.step for m in losses)
    assert len(team.client.get_metric_history(finetune.info.run_id, "learning_rate")) == len(losses)
    metrics = finetune.data.metrics
    assert metrics["held_out_loss"] > 0 and metrics["tokens_per_second"] > 0 and metrics["peak_rss_mb"] > 0
    assert metrics["train_seconds"] > 0 and metrics["final_loss"] == losses[-1].value
    artifacts = {f.path for f in team.client.list_artifacts(finetune.info.run_id)}
    assert {"adapter", "checkpoint", "onnx", "training"} <= artifacts
    adapter = {f.path for f in team.client.list_artifacts(finetune.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter
    plots = {f.path for f in team.client.list_artifacts(finetune.info.run_id, "training")}
    assert "training/loss_curve.png" in plots
    [dataset_input] = finetune.inputs.dataset_inputs
    assert dataset_input.dataset.name == DATASET.stem
    assert dataset_input.dataset.digest == hashlib.sha256(DATASET.read_bytes()).hexdigest()[:16]


def test_both_flavors_are_built_from_the_fine_tuned_checkpoint_by_uri(first_run, team):
    children = team.children(first_run)
    finetune, fetch = children["finetune"], children["fetch_model"]
    assert finetune.data.params["checkpoint_uri"] == f"runs:/{fetch.info.run_id}/checkpoint"
    assert children["log_transformers_pipeline"].data.params["checkpoint_uri"] == (
        f"runs:/{finetune.info.run_id}/checkpoint"
    )
    assert children["log_onnx_wrapper"].data.params["onnx_uri"] == f"runs:/{finetune.info.run_id}/onnx"
    assert finetune.data.tags["slmflow.content.checkpoint_uri"] != fetch.data.tags["slmflow.content.checkpoint_uri"]
    assert finetune.data.tags["slmflow.content.onnx_uri"] != fetch.data.tags["slmflow.content.onnx_uri"]
    for name, run in children.items():  # the declared hand-offs (the Trainer also logs its scratch output_dir)
        assert not any(run.data.params[p.name].startswith("/") for p in CONTRACT[name].parameters), name
    assert finetune.data.params["_name_or_path"] == finetune.data.params["checkpoint_uri"]


def test_the_same_data_again_reuses_every_step_and_registers_nothing(first_run, team, checkout):
    again = run_job(team, checkout)
    team.assert_ok(again)
    assert all(step_reuse(team.parent_of(again.stdout + again.stderr)).values())
    assert [v.version for v in team.client.search_model_versions(f"name = '{MODEL_NAME}'")] == ["1"]


def test_a_job_killed_during_training_then_new_data_retrains_and_the_gates_decide(first_run, team, checkout, tmp_path):
    """The new job also asks for an improvement over the base: evaluate measures the base in both flavors."""
    config = retrain_config(
        tmp_path, [capital_row("Spain", "Madrid"), capital_row("Japan", "Tokyo")], require_improvement_over_base=True
    )
    started = time.time()

    def training_under_way():
        training = running_step(team, "finetune", after=started)
        logged_a_loss = training is not None and team.client.get_metric_history(training.info.run_id, "loss")
        return training if logged_a_loss else None

    training = kill_job_when(
        team.command(str(checkout), config),
        tmp_path,
        training_under_way,
        "finetune logged a loss",
        timeout=1800,
        MLFLOW_TRACKING_URI=team.server.uri,
    )
    assert team.client.get_run(training.info.run_id).info.status == "RUNNING"  # never FINISHED, never reused
    assert [v.version for v in team.client.search_model_versions(f"name = '{MODEL_NAME}'")] == ["1"]
    assert aliases(team.client, MODEL_NAME) == {"champion": "1"}

    job = run_job(team, checkout, config)
    parent = team.parent_of(job.stdout + job.stderr)
    # A refused register records no step on the parent: it is read from the parent's children.
    children = team.children(parent)
    assert "register" in children, job.stdout[-3000:] + job.stderr[-5000:]
    register = children["register"]
    assert {step: parent.data.tags.get(f"slmflow.step.{step}.cached") == "true" for step in STEPS} == {
        "fetch_model": True,  # same base
        "finetune": False,  # new data (and the killed run is not finished)
        "log_onnx_wrapper": False,
        "log_transformers_pipeline": False,
        "evaluate": False,
        "register": False,
    }
    # The base, not fine-tuned, logged in both flavors from fetch_model's hand-offs and measured on the same items.
    fetch = parent.data.tags["slmflow.step.fetch_model.run_id"]
    base_onnx = team.client.get_run(parent.data.tags["slmflow.step.log_onnx_wrapper.base.run_id"])
    assert base_onnx.data.params["onnx_uri"] == f"runs:/{fetch}/onnx"
    base_transformers = team.client.get_run(parent.data.tags["slmflow.step.log_transformers_pipeline.base.run_id"])
    assert base_transformers.data.params["checkpoint_uri"] == f"runs:/{fetch}/checkpoint"
    evaluate = team.client.get_run(parent.data.tags["slmflow.step.evaluate.run_id"])
    assert evaluate.data.params["base_onnx_model_uri"] == base_onnx.data.tags["slmflow.output.model_uri"]
    metrics = evaluate.data.metrics
    for flavor in ("onnx-chat", "transformers-chat"):
        assert 0 <= metrics[f"base-{flavor}/accuracy"] <= 1
        delta = f"delta/{flavor}_vs_base/accuracy"
        assert metrics[f"{delta}_ci_low"] <= metrics[delta] <= metrics[f"{delta}_ci_high"]
    flavor = register.data.params["candidate_flavor"]
    shown_better = metrics[f"delta/{flavor}_vs_base/accuracy_ci_low"] > 0
    retrained = team.client.get_run(parent.data.tags["slmflow.step.finetune.run_id"])
    assert retrained.info.run_id != training.info.run_id
    assert retrained.data.tags["slmflow.cache_key"] == training.data.tags["slmflow.cache_key"]
    assert retrained.data.metrics["dataset_rows"] == 42
    # The gates decide, the base's among them: promoted only when the paired lower bound over the base is above 0.
    if not shown_better:
        assert job.returncode != 0
        assert f"accuracy - base ({flavor}, not fine-tuned, same items)" in job.stderr
        assert "lower bound not above 0.000" in job.stderr and "nothing registered; champion stays at version 1" in (
            job.stderr
        )
        assert aliases(team.client, MODEL_NAME) == {"champion": "1"}
        return
    team.assert_ok(job)
    version = team.client.get_model_version(MODEL_NAME, "2")
    assert (
        version.tags["gates"] == "passed"
        and version.tags["dataset_digest"] != (team.client.get_model_version(MODEL_NAME, "1").tags["dataset_digest"])
    )
    assert version.tags["gate.improvement_over_base"].startswith(f"passed: accuracy - base ({flavor}")
    assert aliases(team.client, MODEL_NAME) == {"champion": "2", "previous-champion": "1"}


def test_a_training_row_from_the_eval_set_stops_the_job_before_any_step(tracking_store, tmp_path):
    leaked = {
        "messages": [
            {"role": "user", "content": "What is the capital of Spain?"},
            {"role": "assistant", "content": "The capital of Spain is Madrid."},
        ]
    }
    config = retrain_config(tmp_path, [leaked])
    result = mlflow_run(str(PROJECT_DIR), tracking_store, config=str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert (
        "1 row(s) ask a question of the eval set capitals.jsonl; the first is capitals-rephrased.jsonl:41: "
        "'What is the capital of Spain?'" in result.stderr
    )
    runs = MlflowClient(tracking_store).search_runs(["0"])
    assert [run.data.tags["mlflow.project.entryPoint"] for run in runs] == ["main"]  # no step ever started
