"""The registry's pure rules on their boundaries: each case sits exactly on a threshold, or one step past it."""

import pytest

from slmflow.config import Gates, SelectionRule
from slmflow.registry.rules import Candidate, choose_candidate, explain_choice, gate_failures, gates_summary

# Values chosen to be exact in binary floating point, so "on the boundary" really is on it.
CHAMPION = {"accuracy": 0.75, "tokens_per_second": 100.0, "latency_p50_s": 0.5}
GATES = Gates(min_accuracy=0.5, min_tokens_per_second=64.0, max_accuracy_regression=0.25, max_latency_regression=0.5)


def candidate(flavor: str, accuracy: float, tokens_per_second: float) -> Candidate:
    return Candidate(flavor, f"models:/m-{flavor}", {"accuracy": accuracy, "tokens_per_second": tokens_per_second})


def pair(onnx: tuple[float, float], transformers: tuple[float, float], onnx_first: bool = True):
    """Both candidates as (accuracy, tokens/s), in either dict order: the order must never decide."""
    items = [
        ("onnx-chat", candidate("onnx-chat", *onnx)),
        ("transformers-chat", candidate("transformers-chat", *transformers)),
    ]
    return dict(items if onnx_first else items[::-1])


@pytest.mark.parametrize("onnx_first", [True, False])
def test_equal_accuracy_is_broken_by_tokens_per_second_whatever_the_order(onnx_first):
    best = SelectionRule(rule="best_accuracy")
    assert choose_candidate(pair((0.5, 10.0), (0.5, 20.0), onnx_first), best).flavor == "transformers-chat"
    assert choose_candidate(pair((0.5, 20.0), (0.5, 10.0), onnx_first), best).flavor == "onnx-chat"
    assert choose_candidate(pair((0.75, 1.0), (0.5, 99.0), onnx_first), best).flavor == "onnx-chat"


@pytest.mark.parametrize("onnx_first", [True, False])
def test_prefer_onnx_on_the_margin_boundary_and_one_step_past_it(onnx_first):
    rule = SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.25)
    assert choose_candidate(pair((0.5, 1.0), (0.75, 9.0), onnx_first), rule).flavor == "onnx-chat"  # exactly 0.25
    below = 0.5 - 2**-20
    assert choose_candidate(pair((below, 1.0), (0.75, 9.0), onnx_first), rule).flavor == "transformers-chat"
    # The margin applies to prefer_onnx only: best_accuracy takes the more accurate one.
    rule_best = SelectionRule(rule="best_accuracy", onnx_accuracy_margin=0.25)
    assert choose_candidate(pair((0.5, 1.0), (0.75, 9.0), onnx_first), rule_best).flavor == "transformers-chat"


def test_prefer_onnx_without_an_onnx_candidate_takes_the_best():
    rule = SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.25)
    only = {"transformers-chat": candidate("transformers-chat", 0.5, 1.0)}
    assert choose_candidate(only, rule).flavor == "transformers-chat"


def test_the_explanation_names_why_for_each_rule():
    prefer = SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.25)
    assert explain_choice(pair((0.5, 1.0), (0.75, 9.0)), prefer) == (
        "onnx-chat chosen by rule prefer_onnx: the ONNX model is within the accuracy margin 0.25 of "
        "transformers-chat (onnx-chat: accuracy 0.500, 1.0 tokens/s; transformers-chat: accuracy 0.750, 9.0 tokens/s)."
    )
    assert explain_choice(pair((0.75, 1.0), (0.5, 9.0)), prefer).startswith(
        "onnx-chat chosen by rule prefer_onnx: the ONNX model is preferred and is also the most accurate ("
    )
    assert explain_choice(pair((0.25, 1.0), (0.75, 9.0)), prefer).startswith(
        "transformers-chat chosen by rule prefer_onnx: highest accuracy, ties broken by tokens/s ("
    )
    best = SelectionRule(rule="best_accuracy", onnx_accuracy_margin=0.25)
    assert explain_choice(pair((0.75, 1.0), (0.5, 9.0)), best).startswith(
        "onnx-chat chosen by rule best_accuracy: highest accuracy, ties broken by tokens/s ("
    )


def metrics(**changes: float) -> dict[str, float]:
    return {**CHAMPION, **changes}


def test_every_metric_exactly_on_its_threshold_passes():
    on_the_line = metrics(accuracy=0.5, tokens_per_second=64.0, latency_p50_s=0.75)  # 0.5 * (1 + 0.5)
    assert gate_failures(on_the_line, GATES, CHAMPION | {"accuracy": 0.75}) == []
    assert gate_failures(on_the_line, GATES, None) == []


def test_one_step_past_each_threshold_fails_that_gate_alone():
    step = 2**-20
    assert gate_failures(metrics(accuracy=0.5 - step), GATES, None) == [
        f"accuracy {0.5 - step:.3f} < min_accuracy 0.500"
    ]
    assert gate_failures(metrics(tokens_per_second=64.0 - step), GATES, None) == [
        "tokens_per_second 64.0 < min_tokens_per_second 64.0"
    ]
    champion = CHAMPION | {"accuracy": 0.875}  # floor 0.625
    assert gate_failures(metrics(accuracy=0.625), GATES, champion) == []
    assert gate_failures(metrics(accuracy=0.625 - step), GATES, champion) == [
        "accuracy 0.625 regresses against the champion's 0.875 by more than max_accuracy_regression 0.250"
    ]
    assert gate_failures(metrics(latency_p50_s=0.75 + step), GATES, CHAMPION) == [
        "latency_p50_s 0.7500 exceeds the champion's 0.5000 by more than max_latency_regression 0.50"
    ]


def test_a_latency_within_the_allowed_regression_passes():
    """The ceiling is the champion's latency times (1 + margin): slower, but within it, passes."""
    assert gate_failures(metrics(latency_p50_s=0.6), GATES, CHAMPION) == []
    assert gate_failures(metrics(latency_p50_s=0.25), GATES, CHAMPION) == []


def test_champion_gates_apply_only_with_a_champion_and_its_metric():
    slow_and_worse = metrics(accuracy=0.5, latency_p50_s=100.0)
    champion = CHAMPION | {"accuracy": 1.0}
    assert len(gate_failures(slow_and_worse, GATES, champion)) == 2
    assert gate_failures(slow_and_worse, GATES, None) == []
    assert gate_failures(slow_and_worse, GATES, {}) == []
    assert gate_failures(slow_and_worse, GATES, {"accuracy": 0.5}) == []  # no latency recorded
    assert gate_failures(slow_and_worse, GATES.model_copy(update={"max_latency_regression": None}), champion) == [
        "accuracy 0.500 regresses against the champion's 1.000 by more than max_accuracy_regression 0.250"
    ]
    only_latency = {"latency_p50_s": 0.5}
    assert gate_failures(metrics(accuracy=0.5, latency_p50_s=0.75), GATES, only_latency) == []


def test_the_gates_summary_names_each_gate():
    assert gates_summary(GATES) == (
        "min_accuracy 0.50, min_tokens_per_second 64, max_accuracy_regression 0.25, max_latency_regression 0.50"
    )
    no_latency = GATES.model_copy(update={"max_latency_regression": None})
    assert gates_summary(no_latency) == "min_accuracy 0.50, min_tokens_per_second 64, max_accuracy_regression 0.25"
