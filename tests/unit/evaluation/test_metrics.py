import pytest

from slmflow.evaluation.answers import AnswerKey
from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.metrics import (
    ExampleResult,
    ModelReport,
    agreement_rate,
    completion_tokens,
    contains_answer,
    exact_match,
    percentile,
    rouge_l,
    score_example,
)


def test_answer_scores():
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


def test_a_chat_completion_is_scored_against_the_example():
    example = EvalExample(
        ({"role": "user", "content": "Capital of Peru?"},),
        "The capital of Peru is Lima.",
        AnswerKey("Lima"),
        "capitals",
    )
    completion = {
        "choices": [{"message": {"role": "assistant", "content": "The capital of Peru is Lima."}}],
        "usage": {"completion_tokens": 9},
    }
    scored = score_example(example, [completion], latency_s=0.2)
    assert (scored.correct, scored.exact, scored.completion_tokens) == (True, True, 9)
    assert scored.rouge_l == pytest.approx(1.0)
    assert completion_tokens("a plain string answer") == 0
