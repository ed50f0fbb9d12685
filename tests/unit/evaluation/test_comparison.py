"""The paired comparisons as metric names: each fine-tuned candidate against the base in its own flavor."""

import pytest

from slmflow.config import EvaluationConfig
from slmflow.evaluation.comparison import comparison_metrics
from slmflow.evaluation.metrics import ExampleResult, ModelReport

EVALUATION = EvaluationConfig(eval_set="eval.jsonl", bootstrap_resamples=500)


def report(name: str, correct: list[bool]) -> ModelReport:
    results = [ExampleResult("a", 0.1, 3, right, right, 1.0) for right in correct]
    return ModelReport(name, f"models:/m-{name}", 1.0, 100.0, 2.0, results, [])


def test_each_candidate_is_compared_with_the_base_of_its_own_flavor():
    candidates = {
        "onnx-chat": report("onnx-chat", [True] * 10),
        "transformers-chat": report("tf", [True] * 9 + [False]),
    }
    bases = {
        "onnx-chat": report("base-onnx-chat", [False] * 5 + [True] * 5),
        "transformers-chat": report("b", [True] * 10),
    }
    metrics = comparison_metrics(candidates, None, EVALUATION, bases)
    assert metrics["delta/onnx-chat_vs_base/accuracy"] == pytest.approx(0.5)
    assert metrics["delta/onnx-chat_vs_base/accuracy_ci_low"] > 0  # 5 discordant items, all the candidate's
    assert metrics["delta/onnx-chat_vs_base/candidate_only_correct"] == 5
    assert metrics["delta/transformers-chat_vs_base/accuracy"] == pytest.approx(-0.1)
    assert metrics["delta/transformers-chat_vs_base/accuracy_ci_high"] == 0.0
    assert not any("champion" in key for key in metrics)


def test_without_a_base_there_is_no_base_comparison():
    candidates = {"onnx-chat": report("onnx-chat", [True, False]), "transformers-chat": report("tf", [True, True])}
    assert not any("_vs_base" in key for key in comparison_metrics(candidates, None, EVALUATION))
    # A base of a flavor that is not a candidate is not compared with anything.
    only_onnx = {"onnx-chat": candidates["onnx-chat"]}
    assert not any(
        "_vs_base" in k for k in comparison_metrics(only_onnx, None, EVALUATION, {"x": candidates["onnx-chat"]})
    )


def test_every_candidate_is_paired_with_every_other_and_two_flavors_keep_their_pair_name():
    variants = {
        "onnx-chat-int4-b32": report("a", [True] * 10),
        "onnx-chat-int4-b16": report("b", [True] * 9 + [False]),
        "transformers-chat": report("c", [True] * 8 + [False] * 2),
    }
    pairs = {key.split("/")[1] for key in comparison_metrics(variants, None, EVALUATION)}
    assert pairs == {
        "onnx-chat-int4-b32_vs_onnx-chat-int4-b16",
        "onnx-chat-int4-b32_vs_transformers-chat",
        "onnx-chat-int4-b16_vs_transformers-chat",
    }
    two = {"onnx-chat": variants["onnx-chat-int4-b32"], "transformers-chat": variants["transformers-chat"]}
    assert {key.split("/")[1] for key in comparison_metrics(two, None, EVALUATION)} == {"onnx_vs_transformers"}
