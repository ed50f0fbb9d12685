import multiprocessing
from pathlib import Path

import mlflow
import pytest

from slmflow.evaluation.answers import AnswerKey
from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.runner import evaluate_loaded_model, evaluate_model, model_size_mb, peak_rss_mb

SPAIN = EvalExample(
    ({"role": "user", "content": "What is the capital of Spain?"},),
    "The capital of Spain is Madrid.",
    AnswerKey("Madrid"),
    "capitals",
)


def test_evaluate_loaded_model_scores_each_example_and_times_streams(onnx_pyfunc):
    wrong = EvalExample(
        ({"role": "user", "content": "What is the capital of Peru?"},), "It is Rome.", AnswerKey("Rome"), "capitals"
    )
    results, ttft = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN, wrong], onnx_pyfunc.predict_stream)
    assert [r.correct for r in results] == [True, False]
    assert results[0].exact and results[0].completion_tokens > 0
    assert len(ttft) == 2 and all(t > 0 for t in ttft)


def test_a_model_is_evaluated_in_its_own_process(logged_models):
    report = evaluate_model("onnx-chat", logged_models["onnx-chat"], [SPAIN])
    assert report.results[0].correct and report.load_seconds > 0
    assert report.peak_rss_mb > 50 and report.size_mb > 0


def _child_peak() -> float:
    return peak_rss_mb()


def test_peak_rss_of_a_spawned_process_is_its_own():
    """ru_maxrss survives exec on Linux; the evaluation's per-model peak must not include the parent's."""
    import numpy as np

    ballast = np.ones(300 * 2**20 // 8)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(_child_peak)
    assert ballast.sum() > 0
    assert child < peak_rss_mb() - 200


def test_model_size_is_read_from_the_artifact_listing(logged_models):
    uri = logged_models["onnx-chat"]
    local = Path(mlflow.artifacts.download_artifacts(uri))
    on_disk = sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) / 2**20
    assert model_size_mb(uri) == pytest.approx(on_disk, rel=0.01)
    version = mlflow.register_model(uri, "size-test")  # the champion comes as models:/<name>/<version>
    assert model_size_mb(f"models:/size-test/{version.version}") == model_size_mb(uri)


def test_an_eval_request_can_bound_its_answer_tokens(onnx_pyfunc):
    [bounded], _ = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN], max_tokens=2)
    [free], _ = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN])
    assert bounded.completion_tokens == 2 < free.completion_tokens
