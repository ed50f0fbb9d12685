import json
from pathlib import Path

import pytest

from slmflow.errors import ConfigError
from slmflow.evaluation import (
    EvalExample,
    ExampleResult,
    ModelReport,
    agreement_rate,
    contains_answer,
    evaluate_loaded_model,
    exact_match,
    load_eval_set,
    percentile,
    rouge_l,
)
from tests.conftest import PROJECT_DIR


def test_shipped_eval_sets_load():
    capitals = load_eval_set(PROJECT_DIR / "configs" / "eval" / "capitals.jsonl")
    assert len(capitals) >= 20
    assert capitals[0].answer in capitals[0].reference
    assert len(load_eval_set(PROJECT_DIR / "configs" / "eval" / "general-qa.jsonl", max_examples=5)) == 5


def test_bad_eval_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}], "reference": "a"}\n{"messages": []}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        load_eval_set(path)
    with pytest.raises(ConfigError, match="eval set not found"):
        load_eval_set(tmp_path / "missing.jsonl")


def test_metrics():
    assert exact_match("The capital of Spain is Madrid.", "the capital of spain is madrid")
    assert not exact_match("Madrid", "The capital of Spain is Madrid.")
    assert contains_answer("It is New Delhi.", "New Delhi")
    assert not contains_answer("Madridistas", "Madrid")
    assert rouge_l("The capital of Spain is Madrid.", "The capital of Spain is Madrid.") == pytest.approx(1.0)
    assert 0 < rouge_l("The capital is Madrid.", "The capital of Spain is Madrid.") < 1
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([5], 0.95) == 5


def result(answer, correct=True, latency=0.1, tokens=5):
    return ExampleResult(answer, latency, tokens, correct, correct, 1.0 if correct else 0.0)


def test_report_metrics_and_agreement():
    a = ModelReport("a", "u", 1.0, 100.0, 2.0, [result("x", latency=0.1), result("y", False, latency=0.3)], [0.01])
    b = ModelReport("b", "v", 1.0, 100.0, 2.0, [result("x"), result("z")])
    metrics = a.metrics()
    assert metrics["accuracy"] == 0.5
    assert metrics["tokens_per_second"] == pytest.approx(10 / 0.4)
    assert metrics["latency_p50_s"] == pytest.approx(0.2)
    assert metrics["ttft_p50_s"] == 0.01
    assert "ttft_p50_s" not in b.metrics()
    assert agreement_rate(a, b) == 0.5


def test_evaluate_loaded_model_scores_each_example_and_times_streams(onnx_pyfunc):
    examples = [
        EvalExample(
            ({"role": "user", "content": "What is the capital of Spain?"},), "The capital of Spain is Madrid.", "Madrid"
        ),
        EvalExample(
            ({"role": "user", "content": "What is the capital of Peru?"},), "The capital of Peru is Rome.", "Rome"
        ),
    ]
    results, ttft = evaluate_loaded_model(onnx_pyfunc.predict, examples, onnx_pyfunc.predict_stream)
    assert [r.correct for r in results] == [True, False]
    assert results[0].exact and results[0].completion_tokens > 0
    assert len(ttft) == 2 and all(t > 0 for t in ttft)


def test_evaluate_step_logs_metrics_table_and_plots(logged_models, tiny_config):
    import mlflow

    from slmflow.evaluation import evaluate_model, log_reports

    examples = load_eval_set(tiny_config.evaluation.eval_set, max_examples=6)
    reports = [evaluate_model(name, uri, examples) for name, uri in logged_models.items()]
    with mlflow.start_run() as run:
        log_reports(examples, reports, tiny_config.evaluation.eval_set)
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    for name in logged_models:
        assert logged.data.metrics[f"{name}/accuracy"] == 1.0
        assert logged.data.metrics[f"{name}/peak_rss_mb"] > 50
        assert logged.data.metrics[f"{name}/size_mb"] > 0
    assert "onnx-chat/ttft_p50_s" in logged.data.metrics
    assert logged.data.metrics["agreement_rate"] == 1.0
    [dataset_input] = logged.inputs.dataset_inputs
    assert dataset_input.dataset.name == "capitals"
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/eval/examples.json")).read_text()
    )
    assert len(table["data"]) == 6
    for plot in ("latency.png", "accuracy_vs_speed.png"):
        png = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/eval/plots/{plot}")
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _child_peak() -> float:
    from slmflow.evaluation import peak_rss_mb

    return peak_rss_mb()


def test_peak_rss_of_a_spawned_process_is_its_own():
    """ru_maxrss survives exec on Linux; the evaluation's per-model peak must not include the parent's."""
    import multiprocessing

    import numpy as np

    from slmflow.evaluation import peak_rss_mb

    ballast = np.ones(300 * 2**20 // 8)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(_child_peak)
    assert ballast.sum() > 0
    assert child < peak_rss_mb() - 200


def test_model_size_is_read_from_the_artifact_listing(logged_models):
    import mlflow

    from slmflow.evaluation import model_size_mb

    uri = logged_models["onnx-chat"]
    local = Path(mlflow.artifacts.download_artifacts(uri))
    on_disk = sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) / 2**20
    assert model_size_mb(uri) == pytest.approx(on_disk, rel=0.01)
