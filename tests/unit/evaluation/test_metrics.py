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
    normalize,
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


@pytest.mark.parametrize(
    ("prediction", "answer", "found"),
    [
        ("It is Colima.", "Lima", False),  # a word ending with the answer is not the answer
        ("Limassol, I think.", "Lima", False),
        ("Lima.", "Lima", True),  # at the very start and end of the answer
        ("The capital is LIMA!", "lima", True),
        ("The capital is New  Delhi", "new delhi", True),
        ("The capital is Newark Delhi", "New Delhi", False),
    ],
)
def test_contains_answer_matches_whole_words_only(prediction, answer, found):
    assert contains_answer(prediction, answer) is found


def test_normalisation_drops_case_accents_punctuation_and_extra_spaces_only():
    assert normalize("  The Capital,  of\tSpain!  ") == "the capital of spain"
    assert normalize("Saint-Étienne_1") == "saint etienne_1"  # accents go (Bogotá is Bogota); word characters stay
    assert exact_match("Madrid.", "madrid") and not exact_match("Madrid", "Madrid is")


def test_rouge_l_compares_words_without_stemming():
    assert rouge_l("capitals", "capital") == 0.0
    assert rouge_l("a b c d", "a b x y") == pytest.approx(0.5)


def test_percentile_interpolates_between_neighbours():
    values = [4.0, 1.0, 3.0, 2.0, 10.0]  # sorted first: 1 2 3 4 10
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 10.0
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.95) == pytest.approx(4 + (10 - 4) * 0.8)
    assert percentile(values, 0.1) == pytest.approx(1.4)


def test_every_report_metric_from_its_results():
    results = [
        ExampleResult("a", 0.5, 4, True, False, 0.25),
        ExampleResult("b", 1.5, 8, False, True, 0.75),
        ExampleResult("c", 1.0, 3, True, True, 0.5),
    ]
    report = ModelReport("m", "models:/m-1", 2.0, 300.0, 40.0, results, ttft_s=[0.1, 0.3])
    assert report.metrics() == {
        "accuracy": pytest.approx(2 / 3),
        "exact_match": pytest.approx(2 / 3),
        "rouge_l": pytest.approx(0.5),
        "latency_p50_s": 1.0,
        "latency_p95_s": pytest.approx(1.45),
        "tokens_per_second": pytest.approx(15 / 3.0),
        "completion_tokens": 15.0,
        "answer_seconds": 0.0,
        "eval_tokens_per_second": 0.0,
        "eval_batch_size": 1.0,
        "batch_mismatches": 0.0,
        "load_seconds": 2.0,
        "peak_rss_mb": 300.0,
        "size_mb": 40.0,
        "ttft_p50_s": pytest.approx(0.2),
    }
    instant = ModelReport("m", "u", 0.0, 0.0, 0.0, [ExampleResult("a", 0.0, 5, True, True, 1.0)])
    assert instant.metrics()["tokens_per_second"] == 0.0


def test_completion_tokens_of_each_prediction_shape():
    assert completion_tokens([{"usage": {"completion_tokens": 7}}]) == 7
    assert completion_tokens({"usage": {"completion_tokens": "3"}}) == 3
    assert completion_tokens({"choices": []}) == 0


def test_agreement_compares_normalised_answers_pairwise():
    a = ModelReport("a", "u", 0, 0, 0, [result("Lima."), result("Oslo"), result("Rome")])
    b = ModelReport("b", "v", 0, 0, 0, [result("lima"), result("Paris"), result("ROME!")])
    assert agreement_rate(a, b) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        agreement_rate(a, ModelReport("c", "w", 0, 0, 0, [result("lima")]))


def test_a_wrong_answer_scores_zero():
    example = EvalExample(
        ({"role": "user", "content": "Capital of Peru?"},),
        "The capital of Peru is Lima.",
        AnswerKey("Lima"),
        "capitals",
    )
    scored = score_example(example, "The capital of Peru is Colima.", latency_s=0.5)
    assert (scored.correct, scored.exact, scored.latency_s, scored.answer) == (
        False,
        False,
        0.5,
        "The capital of Peru is Colima.",
    )
    assert 0 < scored.rouge_l < 1


def test_batched_items_without_a_latency_are_left_out_of_latency_and_decoding_rate():
    results = [
        ExampleResult("a", 0.5, 4, True, True, 1.0),
        ExampleResult("b", None, 8, True, True, 1.0),
        ExampleResult("c", 1.5, 6, False, False, 0.0),
    ]
    report = ModelReport("m", "u", 1.0, 1.0, 1.0, results, answer_seconds=3.0, batch_size=2, batch_mismatches=1)
    metrics = report.metrics()
    assert metrics["latency_p50_s"] == pytest.approx(1.0)
    assert metrics["tokens_per_second"] == pytest.approx(10 / 2.0)  # the timed items only
    assert metrics["eval_tokens_per_second"] == pytest.approx(18 / 3.0)  # every item, over the batched pass
    assert (metrics["eval_batch_size"], metrics["batch_mismatches"]) == (2.0, 1.0)
