import pytest

from slmflow.config import Gates, SelectionRule, load_config
from slmflow.errors import ConfigError
from slmflow.evaluation.statistics import Interval
from slmflow.registry.rules import (
    Candidate,
    champion_evidence,
    check_margins_resolvable,
    choose_candidate,
    explain_choice,
    gate_failures,
    gate_results,
    gates_summary,
    improvement_over_base_gate,
    margin_problems,
)
from testkit.processes import PROJECT_DIR

GOOD = {"accuracy": 0.95, "accuracy_ci_low": 0.9, "accuracy_ci_high": 0.98, "tokens_per_second": 300.0}
RULE = SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.05)


def candidates(onnx_accuracy=0.9, transformers_accuracy=0.95):
    return {
        "onnx-chat": Candidate("onnx-chat", "models:/m-onnx", {**GOOD, "accuracy": onnx_accuracy}),
        "transformers-chat": Candidate(
            "transformers-chat", "models:/m-tf", {**GOOD, "accuracy": transformers_accuracy, "tokens_per_second": 50.0}
        ),
    }


def gap(estimate, low, high):
    return Interval(estimate, low, high, 0.95)


def test_best_accuracy_rule_and_tie_break_by_speed():
    assert choose_candidate(candidates(0.9, 0.95), SelectionRule(), gap(-0.05, -0.1, 0)).flavor == "transformers-chat"
    assert choose_candidate(candidates(0.95, 0.95), SelectionRule(), gap(0, 0, 0)).flavor == "onnx-chat"


def test_prefer_onnx_only_when_the_interval_shows_it_non_inferior():
    assert choose_candidate(candidates(0.91, 0.95), RULE, gap(-0.04, -0.049, -0.02)).flavor == "onnx-chat"
    # The same point estimate, but an interval reaching the margin: not shown non-inferior.
    assert choose_candidate(candidates(0.91, 0.95), RULE, gap(-0.04, -0.05, -0.02)).flavor == "transformers-chat"
    assert choose_candidate(candidates(0.80, 0.95), RULE, gap(-0.15, -0.2, -0.1)).flavor == "transformers-chat"


def test_the_choice_is_explained_with_the_interval():
    assert explain_choice(candidates(0.91, 0.95), RULE, gap(-0.04, -0.045, -0.02)) == (
        "onnx-chat chosen by rule prefer_onnx: the ONNX model is non-inferior: onnx - transformers accuracy "
        "-0.040 [-0.045, -0.020] (95%) lies above -0.05 (onnx-chat: accuracy 0.910, 300.0 tokens/s; "
        "transformers-chat: accuracy 0.950, 50.0 tokens/s)."
    )
    assert "not shown non-inferior (onnx - transformers accuracy -0.150 [-0.200, -0.100] (95%) reaches -0.05)" in (
        explain_choice(candidates(0.80, 0.95), RULE, gap(-0.15, -0.2, -0.1))
    )


def evidence(candidate, comparisons, measured="models:/m/1", error=None, champion_uri="models:/m-champion"):
    return champion_evidence(
        "1", champion_uri, {"accuracy": 0.9}, candidate, candidates(), comparisons, measured, error, 0.95
    )


PAIRED = {
    "onnx-chat_vs_champion/accuracy": -0.02,
    "onnx-chat_vs_champion/accuracy_ci_low": -0.04,
    "onnx-chat_vs_champion/accuracy_ci_high": 0.0,
    "onnx-chat_vs_champion/latency_ratio": 1.3,
    "onnx-chat_vs_champion/latency_ratio_ci_low": 1.2,
    "onnx-chat_vs_champion/latency_ratio_ci_high": 1.4,
    "onnx_vs_transformers/accuracy": -0.05,
    "onnx_vs_transformers/accuracy_ci_low": -0.08,
    "onnx_vs_transformers/accuracy_ci_high": -0.01,
    "onnx_vs_transformers/latency_ratio": 0.5,
    "onnx_vs_transformers/latency_ratio_ci_low": 0.4,
    "onnx_vs_transformers/latency_ratio_ci_high": 0.625,
}


def test_non_inferiority_reads_the_lower_bound_of_the_paired_interval():
    onnx = candidates()["onnx-chat"]
    paired = evidence(onnx, PAIRED)
    assert paired.how == "measured in this run on the same items"
    results = {r.name: r for r in gate_results(onnx, Gates(max_accuracy_regression=0.05), paired)}
    assert results["max_accuracy_regression"].passed
    assert gate_failures(list(results.values())) == []
    [failure] = gate_failures(gate_results(onnx, Gates(max_accuracy_regression=0.04), paired))
    assert failure == (
        "accuracy - champion -0.020 [-0.040, +0.000] (95%), lower bound not above -0.040, against champion "
        "version 1 (measured in this run on the same items)"
    )


def test_latency_gate_reads_the_upper_bound_of_the_paired_median_ratio():
    onnx = candidates()["onnx-chat"]
    gates = Gates(max_accuracy_regression=None, max_latency_regression=0.5)
    assert gate_failures(gate_results(onnx, gates, evidence(onnx, PAIRED))) == []
    [failure] = gate_failures(gate_results(onnx, Gates(max_latency_regression=0.35), evidence(onnx, PAIRED)))
    assert failure.startswith("latency / champion median ratio 1.300 [1.200, 1.400] (95%), upper bound not below")


def test_a_champion_that_is_the_other_flavor_is_compared_through_the_onnx_transformers_pair():
    transformers = candidates()["transformers-chat"]
    turned = evidence(transformers, PAIRED, measured=None, champion_uri="models:/m-onnx")
    assert turned.how == "is the onnx-chat model of this run"
    assert (turned.accuracy.estimate, turned.accuracy.low, turned.accuracy.high) == (0.05, 0.01, 0.08)
    assert turned.latency_ratio.estimate == 2.0 and turned.latency_ratio.low == 1.6


def test_the_champion_itself_is_not_worse_and_an_unmeasured_one_falls_back_to_its_tags():
    onnx = candidates()["onnx-chat"]
    itself = evidence(onnx, {}, measured=None, champion_uri="models:/m-onnx")
    assert itself.how == "is this very model" and itself.accuracy.low == 0.0
    assert gate_failures(gate_results(onnx, Gates(max_accuracy_regression=0.05), itself)) == []
    fallback = evidence(onnx, PAIRED, measured=None, error="models:/m/1 could not be measured: OSError: gone")
    assert fallback.accuracy is None and fallback.recorded == {"accuracy": 0.9}
    [result] = [r for r in gate_results(onnx, Gates(), fallback) if r.name == "max_accuracy_regression"]
    assert "not measured in this run (models:/m/1 could not be measured: OSError: gone)" in result.text
    # A measured champion of another version than the one now in service does not count as paired.
    assert evidence(onnx, PAIRED, measured="models:/m/7").accuracy is None


def test_min_gates_name_the_numbers_and_the_interval():
    bad = Candidate("onnx-chat", "models:/m-x", {**GOOD, "accuracy": 0.5, "tokens_per_second": 10.0})
    assert gate_failures(gate_results(bad, Gates(min_accuracy=0.8, min_tokens_per_second=500), None)) == [
        "accuracy 0.500 [0.900, 0.980] < min_accuracy 0.800",
        "tokens_per_second 10.0 < min_tokens_per_second 500.0",
    ]


def test_a_margin_the_suite_cannot_resolve_is_refused_saying_how_many_items_it_needs():
    tiny = load_config(PROJECT_DIR / "configs" / "tiny.yaml")
    assert margin_problems(tiny, 24) == []
    strict = tiny.model_copy(
        update={"registry": tiny.registry.model_copy(update={"gates": Gates(max_accuracy_regression=0.05)})}
    )
    with pytest.raises(ConfigError) as refused:
        check_margins_resolvable(strict, 24)
    assert str(refused.value) == (
        "registry.gates.max_accuracy_regression 0.05 needs at least 231 eval items at confidence 0.95 "
        "(evaluation.assumed_discordance 0.15); the eval items are 24: add items or widen the margin"
    )
    assert margin_problems(strict, 231) == []


@pytest.mark.parametrize(
    ("low", "passed", "verdict"),
    [
        (0.001, True, "lower bound above 0.000"),
        (0.0, False, "lower bound not above 0.000"),  # an interval touching 0 shows no improvement
        (-0.05, False, "lower bound not above 0.000"),
    ],
)
def test_improvement_over_base_needs_the_whole_paired_interval_above_zero(low, passed, verdict):
    gate = improvement_over_base_gate("onnx-chat", gap(0.1, low, 0.2))
    assert gate.name == "improvement_over_base" and gate.passed is passed
    assert gate.text == (
        f"accuracy - base (onnx-chat, not fine-tuned, same items) +0.100 [{low:+.3f}, +0.200] (95%), {verdict}"
    )


def test_an_unmeasured_base_fails_the_improvement_gate_saying_why():
    gate = improvement_over_base_gate("transformers-chat", None)
    assert not gate.passed
    assert gate.text == (
        "accuracy - base (transformers-chat) was not measured in the evaluate run, so no improvement is shown"
    )
    assert gate_failures([gate]) == [gate.text]


def test_the_gates_summary_names_the_base_gate_only_when_required():
    assert "improvement over the base" not in gates_summary(Gates())
    assert gates_summary(Gates(), require_improvement_over_base=True).endswith(
        "improvement over the base (paired lower bound above 0)"
    )
