"""Quantization as a measured choice, end to end on the tiny model (one `mlflow run` on a sqlite store): two
source.builder variants are built and logged as their own onnx-chat models, evaluated with transformers-chat on
the same items, and register picks the fastest one non-inferior to the most accurate, saying why."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from slmflow.config import SelectionRule
from slmflow.registry.registrar import evaluation_from_run
from slmflow.registry.rules import choose_candidate
from testkit.processes import PROJECT_DIR
from tests.e2e.test_pipeline_runs import children_of, mlflow_run, parent_runs, variant_config, versions

NAME = "variants-tiny"
B32, B16 = "onnx-chat-int4-b32", "onnx-chat-int4-b16"
VARIANTS = {"builder": [{"precision": "int4", "block_size": 32}, {"precision": "int4", "block_size": 16}]}


def test_two_variants_are_logged_evaluated_on_the_same_items_and_the_choice_is_explained(tmp_path, cache_dir):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = variant_config(tmp_path, source=VARIANTS, registry={"model_name": NAME})
    result = mlflow_run(str(PROJECT_DIR), store, config=str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(store)
    parent = parent_runs(client)[0]
    children = children_of(client, parent)

    fetched = children["fetch_model"].data.tags
    logged = {}
    for variant, name in (("int4-b32", B32), ("int4-b16", B16)):
        assert fetched[f"slmflow.output.onnx_uri.{variant}"].endswith(f"/onnx-{variant}")
        wrapper = client.get_run(parent.data.tags[f"slmflow.step.log_onnx_wrapper.{variant}.run_id"])
        assert wrapper.data.params["variant"] == variant
        model_uri = wrapper.data.tags["slmflow.output.model_uri"]
        assert client.get_logged_model(model_uri.removeprefix("models:/")).name == name
        logged[name] = model_uri

    evaluate = children["evaluate"]
    assert {
        tag.removeprefix("slmflow.candidate."): uri for tag, uri in evaluate.data.tags.items() if "candidate." in tag
    } == (logged | {"transformers-chat": children["log_transformers_pipeline"].data.tags["slmflow.output.model_uri"]})
    # Every model answered every item: one row per item in the evaluation's table, a column per model.
    table = json.loads(
        Path(client.download_artifacts(evaluate.info.run_id, "eval/examples.json", str(tmp_path))).read_text()
    )
    rows = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert all(len(rows[f"{model}/correct"]) == 24 for model in (B32, B16, "transformers-chat"))
    metrics = evaluate.data.metrics
    for pair in (f"{B32}_vs_{B16}", f"{B32}_vs_transformers-chat", f"{B16}_vs_transformers-chat"):
        assert f"delta/{pair}/accuracy_ci_low" in metrics, pair

    register = children["register"]
    evaluation = evaluation_from_run(evaluate, 0.95)
    expected = choose_candidate(
        evaluation.candidates, SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.2), evaluation.accuracy_gap
    )
    chosen = register.data.params["candidate_flavor"]
    assert chosen in (B32, B16) and chosen == expected.flavor
    faster = max((B32, B16), key=lambda model: metrics[f"{model}/tokens_per_second"])
    assert chosen == faster  # the tiny model answers alike at both block sizes: both are non-inferior
    assert versions(client, NAME) == ["1"]
    description = client.get_model_version(NAME, "1").description
    assert f"{chosen} chosen by rule prefer_onnx" in description
    # The reason carries the paired interval between the variants and the margin it clears.
    interval = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(95%\)"
    assert re.search(rf"onnx-chat-int4-b\d+ - onnx-chat-int4-b\d+ accuracy {interval} lies above -0\.20", description)
