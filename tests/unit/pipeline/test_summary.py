from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from slmflow.pipeline.summary import (
    describe_experiment,
    evaluated_metrics,
    metrics_table,
    pipeline_run_name,
    record_summary,
    summary_markdown,
)


def test_the_pipeline_run_is_named_after_its_config():
    assert pipeline_run_name("configs/tiny.yaml") == "pipeline tiny"
    assert pipeline_run_name("/abs/phi3-mini-4k-instruct.yaml") == "pipeline phi3-mini-4k-instruct"


def test_metrics_sit_side_by_side_and_missing_ones_stay_blank():
    table = metrics_table({"a": {"accuracy": 1.0, "ttft_p50_s": 0.01}, "b": {"accuracy": 0.5}})
    assert table.splitlines() == [
        "| metric | a | b |",
        "|---|---|---|",
        "| accuracy | 1 | 0.5 |",
        "| ttft_p50_s | 0.01 |  |",
    ]


def test_paired_comparisons_get_their_own_table_with_intervals():
    delta = {
        "onnx_vs_transformers/accuracy": -0.02,
        "onnx_vs_transformers/accuracy_ci_low": -0.05,
        "onnx_vs_transformers/accuracy_ci_high": 0.01,
        "onnx_vs_transformers/mcnemar_p": 0.42,
        "onnx_vs_transformers/latency_ratio": 0.2,
        "onnx_vs_transformers/latency_ratio_ci_low": 0.18,
        "onnx_vs_transformers/latency_ratio_ci_high": 0.22,
    }
    note = summary_markdown("pipeline x", {"onnx-chat": {"accuracy": 0.9}, "delta": delta}, "ok", {})
    assert "| onnx_vs_transformers | -0.020 [-0.050, +0.010] | 0.42 | +0.200 [+0.180, +0.220] |" in note
    assert "| metric | onnx-chat |" in note and "| metric | onnx-chat | delta |" not in note


def test_a_failed_pipeline_says_nothing_was_promoted():
    note = summary_markdown("pipeline x", {}, "**Nothing promoted:** gates failed", {"fetch_model": True})
    assert note == "## pipeline x\n\n**Nothing promoted:** gates failed\n\nSteps: fetch_model (reused)"


def test_the_note_reads_what_the_steps_recorded(tracking_store, tmp_path):
    client = MlflowClient()
    plot = tmp_path / "latency.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    with mlflow.start_run() as evaluate:
        mlflow.log_metrics({"onnx-chat/accuracy": 0.9, "onnx-chat/correct/mean": 0.9, "agreement_rate": 1.0})
        mlflow.log_artifact(str(plot), "eval/plots")
    with mlflow.start_run() as parent:
        mlflow.set_tags({"slmflow.step.evaluate.run_id": evaluate.info.run_id, "slmflow.step.evaluate.cached": "true"})
    assert evaluated_metrics(client.get_run(evaluate.info.run_id)) == {
        "onnx-chat": {"accuracy": 0.9, "correct/mean": 0.9}
    }
    note = record_summary(client, parent.info.run_id, "pipeline tiny", failure="step 'register' failed: gates")
    assert client.get_run(parent.info.run_id).data.tags["mlflow.note.content"] == note
    assert "**Nothing promoted:** step 'register' failed: gates" in note
    assert "| accuracy | 0.9 |" in note and "evaluate (reused)" in note
    copied = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="eval/plots/latency.png")
    assert Path(copied).read_bytes() == plot.read_bytes()


def test_the_experiment_opens_as_model_development(tracking_store):
    client = MlflowClient()
    experiment_id = client.create_experiment("slmflow-test")
    describe_experiment(client, experiment_id, "configs/tiny.yaml")
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["slmflow.config"] == "configs/tiny.yaml" and "Traces tab" in tags["mlflow.note.content"]
