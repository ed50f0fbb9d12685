import multiprocessing
from pathlib import Path

import mlflow
import pytest

from slmflow.evaluation.answers import AnswerKey
from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.runner import (
    LATENCY_SAMPLE,
    batch_answerer,
    evaluate_loaded_model,
    evaluate_model,
    latency_sample,
    model_size_mb,
    peak_rss_mb,
)

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
    answers = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN, wrong], onnx_pyfunc.predict_stream)
    results, ttft = answers.results, answers.ttft_s
    assert [r.correct for r in results] == [True, False]
    assert results[0].exact and results[0].completion_tokens > 0
    assert all(r.latency_s is not None and r.latency_s > 0 for r in results)
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
    [bounded] = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN], max_tokens=2).results
    [free] = evaluate_loaded_model(onnx_pyfunc.predict, [SPAIN]).results
    assert bounded.completion_tokens == 2 < free.completion_tokens


def _capitals(count: int) -> list[EvalExample]:
    from slmflow.config import SuiteConfig
    from slmflow.evaluation.suites import build_suite

    return build_suite(SuiteConfig(skills={"capitals": count}, seed=0))


def test_the_latency_sample_is_spread_over_the_suite_and_the_same_for_every_model():
    assert latency_sample(5) == [0, 1, 2, 3, 4]
    sample = latency_sample(224)
    assert len(sample) == LATENCY_SAMPLE == len(set(sample))
    assert sample[0] == 0 and sample[-1] >= 224 - 224 // LATENCY_SAMPLE
    assert latency_sample(224) == sample


@pytest.mark.parametrize("flavor", ["onnx-chat", "transformers-chat"])
def test_batched_answers_equal_the_one_by_one_greedy_answers(logged_models, flavor):
    """The accuracy pass batches; its answers must be those a user gets from predict, one request at a time."""
    model = mlflow.pyfunc.load_model(logged_models[flavor])
    examples = _capitals(20)  # questions of different lengths: the batch is padded
    answer_batch = batch_answerer(model, flavor)
    assert answer_batch is not None
    requests = [{"messages": list(e.messages), "max_tokens": 12} for e in examples]
    batched = answer_batch(requests)
    single = [model.predict(request) for request in requests]
    for one, together in zip(single, batched, strict=True):
        one = one[0] if isinstance(one, list) else one
        assert together["choices"][0]["message"]["content"] == one["choices"][0]["message"]["content"]
        assert together["usage"]["completion_tokens"] == one["usage"]["completion_tokens"]
        assert together["choices"][0]["finish_reason"] == one["choices"][0]["finish_reason"]
    answers = evaluate_loaded_model(model.predict, examples, max_tokens=12, answer_batch=answer_batch, batch_size=8)
    assert [r.answer for r in answers.results] == [
        (s[0] if isinstance(s, list) else s)["choices"][0]["message"]["content"] for s in single
    ]
    timed = [index for index, r in enumerate(answers.results) if r.latency_s is not None]
    assert timed == latency_sample(len(examples)) and len(timed) < len(examples)
    assert answers.batch_size == 8 and answers.batch_mismatches == 0 and answers.answer_seconds > 0
