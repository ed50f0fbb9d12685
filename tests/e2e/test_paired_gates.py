"""Paired gates end to end on the tiny model (`mlflow run` on a sqlite store): the champion is measured in the
same run on the same items, an identical candidate is not worse, a degraded one fails with its interval, and
a margin the eval items cannot resolve is refused before any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from testkit.processes import PROJECT_DIR
from tests.e2e.test_pipeline_runs import children_of, mlflow_run, parent_runs, variant_config, versions

NAME = "paired-tiny"
REGISTRY = {"model_name": NAME}


class Store:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def run(self, name: str, **changes):
        config = variant_config(self.folder / name, **{"registry": REGISTRY, **changes})
        return mlflow_run(str(PROJECT_DIR), self.uri, config=str(config), cwd=self.folder)

    def latest(self):
        parent = parent_runs(self.client)[0]
        return parent, children_of(self.client, parent)


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir) -> Store:
    store = Store(tmp_path_factory.mktemp("paired"))
    first = store.run("first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert versions(store.client, NAME) == ["1"]
    return store


def test_an_identical_candidate_is_not_worse_and_not_registered_again(store):
    result = store.run("identical", evaluation={"seed": 1})  # evaluate and register redone, same models
    assert result.returncode == 0, result.stderr[-3000:]
    _, children = store.latest()
    assert children["evaluate"].data.params["champion_model_uri"] == "none"  # the champion is a candidate
    assert versions(store.client, NAME) == ["1"]
    assert "already registered" in result.stdout


@pytest.mark.timeout(1800)
def test_the_champion_is_measured_in_the_same_run_and_a_degraded_candidate_fails_with_its_interval(store):
    same_answers = store.run("one-thread", runtime={"intra_op_num_threads": 1})  # a new onnx-chat model
    assert same_answers.returncode == 0, same_answers.stderr[-3000:]
    _, children = store.latest()
    evaluate = children["evaluate"]
    assert evaluate.data.params["champion_model_uri"] == f"models:/{NAME}/1"
    assert evaluate.data.tags["slmflow.champion.measured"] == f"models:/{NAME}/1"
    metrics = evaluate.data.metrics
    assert metrics["champion/accuracy"] == metrics["onnx-chat/accuracy"]
    assert metrics["delta/onnx-chat_vs_champion/accuracy_ci_low"] == 0.0  # the same answers on every item
    assert versions(store.client, NAME) == ["1", "2"]
    gate = store.client.get_model_version(NAME, "2").tags["gate.max_accuracy_regression"]
    assert gate.startswith("passed: accuracy - champion +0.000 [+0.000, +0.000] (95%)")
    assert "measured in this run on the same items" in gate

    degraded = store.run(
        "untrained",
        source={"model": "builtin:tiny-phi3-untrained"},
        registry={**REGISTRY, "gates": {"min_accuracy": 0.0, "max_accuracy_regression": 0.2}},
    )
    assert degraded.returncode != 0
    refusals = [line for line in degraded.stderr.splitlines() if line.startswith("error: ") and "gates" in line]
    assert refusals
    for line in refusals:  # the step's one line, and the pipeline's naming the step
        assert "accuracy - champion -1.000 [-1.000, -1.000] (95%), lower bound not above -0.200" in line
        assert "against champion version 2 (measured in this run on the same items)" in line
    assert versions(store.client, NAME) == ["1", "2"]


def test_a_margin_too_small_for_the_eval_items_is_refused_before_any_step(tmp_path):
    store = Store(tmp_path)  # no first run needed: nothing is built
    registry = {**REGISTRY, "gates": {"min_accuracy": 0.8, "max_accuracy_regression": 0.05}}
    result = store.run("strict", registry=registry)
    assert result.returncode != 0
    assert (
        "registry.gates.max_accuracy_regression 0.05 needs at least 231 eval items at confidence 0.95 "
        "(evaluation.assumed_discordance 0.15); the eval items are 24" in result.stderr
    )
    parent, children = store.latest()
    assert parent.info.status == "FAILED" and children == {}
