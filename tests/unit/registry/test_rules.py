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
    paired_between,
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


def onnx_gap(interval):
    """The onnx-chat - transformers-chat interval as the evaluate run holds it (None: not measured)."""
    return lambda candidate, baseline: interval if (candidate, baseline) == ("onnx-chat", "transformers-chat") else None


def test_best_accuracy_rule_and_tie_break_by_speed():
    assert (
        choose_candidate(candidates(0.9, 0.95), SelectionRule(), onnx_gap(gap(-0.05, -0.1, 0))).flavor
        == "transformers-chat"
    )
    assert choose_candidate(candidates(0.95, 0.95), SelectionRule(), onnx_gap(gap(0, 0, 0))).flavor == "onnx-chat"


def test_prefer_onnx_only_when_the_interval_shows_it_non_inferior():
    assert choose_candidate(candidates(0.91, 0.95), RULE, onnx_gap(gap(-0.04, -0.049, -0.02))).flavor == "onnx-chat"
    # The same point estimate, but an interval reaching the margin: not shown non-inferior.
    assert (
        choose_candidate(candidates(0.91, 0.95), RULE, onnx_gap(gap(-0.04, -0.05, -0.02))).flavor == "transformers-chat"
    )
    assert (
        choose_candidate(candidates(0.80, 0.95), RULE, onnx_gap(gap(-0.15, -0.2, -0.1))).flavor == "transformers-chat"
    )


def test_the_choice_is_explained_with_the_interval():
    assert explain_choice(candidates(0.91, 0.95), RULE, onnx_gap(gap(-0.04, -0.045, -0.02))) == (
        "onnx-chat chosen by rule prefer_onnx: the fastest ONNX model non-inferior to the most accurate "
        "(transformers-chat): onnx-chat - transformers-chat accuracy -0.040 [-0.045, -0.020] (95%) lies above -0.05 "
        "(onnx-chat: accuracy 0.910, 300.0 tokens/s; "
        "transformers-chat: accuracy 0.950, 50.0 tokens/s)."
    )
    assert (
        "no ONNX model is shown non-inferior to the most accurate (onnx-chat - transformers-chat accuracy -0.150 "
        "[-0.200, -0.100] (95%) reaches -0.05)"
    ) in explain_choice(candidates(0.80, 0.95), RULE, onnx_gap(gap(-0.15, -0.2, -0.1)))


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


# Boundaries: each threshold exactly met. Values are exact in binary, so `<` against `<=` is what decides.


def test_a_candidate_exactly_at_min_accuracy_and_min_tokens_per_second_passes():
    at = Candidate("onnx-chat", "models:/m-x", {"accuracy": 0.75, "tokens_per_second": 500.0})
    results = gate_results(at, Gates(min_accuracy=0.75, min_tokens_per_second=500), None)
    assert [(r.name, r.passed, r.text) for r in results] == [
        ("min_accuracy", True, "accuracy 0.750 >= min_accuracy 0.750"),
        ("min_tokens_per_second", True, "tokens_per_second 500.0 >= min_tokens_per_second 500.0"),
    ]


def test_a_latency_upper_bound_exactly_at_one_plus_the_margin_fails():
    onnx = candidates()["onnx-chat"]

    def latency_gate(high: float) -> bool:
        ratio = {**PAIRED, "onnx-chat_vs_champion/latency_ratio_ci_high": high}
        gates = Gates(max_accuracy_regression=None, max_latency_regression=0.5)
        [result] = [r for r in gate_results(onnx, gates, evidence(onnx, ratio)) if r.name == "max_latency_regression"]
        return result.passed

    assert latency_gate(1.4375) and not latency_gate(1.5)  # the ceiling is 1 + 0.5, never 0.5


def fallback_gates(candidate_metrics, recorded, **gates):
    candidate = Candidate("onnx-chat", "models:/m-onnx", {**GOOD, **candidate_metrics})
    fallback = champion_evidence("1", "models:/m-champion", recorded, candidate, {}, {}, None, None, 0.95)
    assert fallback.accuracy is None and fallback.latency_ratio is None
    return {r.name: r for r in gate_results(candidate, Gates(**gates), fallback)}


def test_recorded_metrics_fallback_boundaries():
    """Without a paired measurement: accuracy - recorded must lie above -margin, latency below recorded x (1 + m)."""
    regression = {"max_accuracy_regression": 0.25, "max_latency_regression": None}
    on_floor = fallback_gates({"accuracy": 0.5}, {"accuracy": 0.75}, **regression)["max_accuracy_regression"]
    assert not on_floor.passed and on_floor.text.startswith(
        "accuracy 0.500 - champion's recorded 0.750 = -0.250, not above -0.250, against champion version 1 "
        "(not measured in this run (version 1 was not measured in this run); compared with its recorded metrics)"
    )
    assert fallback_gates({"accuracy": 0.5625}, {"accuracy": 0.75}, **regression)["max_accuracy_regression"].passed
    latency = {"max_accuracy_regression": None, "max_latency_regression": 0.5}
    recorded = {"accuracy": 0.9, "latency_p50_s": 0.25}  # the ceiling: 0.25 x 1.5 = 0.375
    assert fallback_gates({"latency_p50_s": 0.3125}, recorded, **latency)["max_latency_regression"].passed
    on_ceiling = fallback_gates({"latency_p50_s": 0.375}, recorded, **latency)["max_latency_regression"]
    assert not on_ceiling.passed and on_ceiling.text.startswith(
        "latency_p50_s 0.3750 against the champion's recorded 0.2500 x 1.500"
    )
    # A champion that recorded no latency cannot be slower than: the gate passes, saying nan.
    unrecorded = fallback_gates({"latency_p50_s": 9.0}, {"accuracy": 0.9}, **latency)["max_latency_regression"]
    assert unrecorded.passed and "recorded nan x 1.500" in unrecorded.text
    # A candidate without a latency cannot be shown not slower: the gate fails, saying why (not a KeyError).
    unmeasured = fallback_gates({"accuracy": 0.9}, recorded, **latency)["max_latency_regression"]
    assert not unmeasured.passed and "the candidate has no latency_p50_s to compare" in unmeasured.text


def test_a_tie_goes_to_the_faster_candidate_whichever_comes_first():
    def tied(first: str, first_speed: float, second: str, second_speed: float) -> dict[str, Candidate]:
        return {
            name: Candidate(name, f"models:/{name}", {**GOOD, "tokens_per_second": speed})
            for name, speed in ((first, first_speed), (second, second_speed))
        }

    slower_first = tied("transformers-chat", 50.0, "onnx-chat", 300.0)
    assert choose_candidate(slower_first, SelectionRule(), onnx_gap(None)).flavor == "onnx-chat"
    assert choose_candidate(
        tied("onnx-chat", 50.0, "transformers-chat", 300.0), SelectionRule(), onnx_gap(None)
    ).flavor == ("transformers-chat")


def test_prefer_onnx_without_a_paired_interval_falls_back_to_the_best_accuracy():
    """No onnx - transformers interval (one flavor evaluated on other items): nothing shows ONNX non-inferior."""
    assert choose_candidate(candidates(0.9, 0.95), RULE, onnx_gap(None)).flavor == "transformers-chat"
    assert explain_choice(candidates(0.9, 0.95), RULE, onnx_gap(None)).startswith(
        "transformers-chat chosen by rule prefer_onnx: no ONNX model is shown non-inferior to the most accurate "
        "(onnx-chat - transformers-chat accuracy not measured); highest accuracy, ties broken by tokens/s ("
    )


def test_every_branch_of_the_explanation_names_the_rule_and_the_gap():
    assert explain_choice(candidates(0.80, 0.95), RULE, onnx_gap(gap(-0.15, -0.2, -0.1))) == (
        "transformers-chat chosen by rule prefer_onnx: no ONNX model is shown non-inferior to the most accurate "
        "(onnx-chat - transformers-chat accuracy -0.150 [-0.200, -0.100] (95%) reaches -0.05); highest accuracy, "
        "ties broken by tokens/s "
        "(onnx-chat: accuracy 0.800, 300.0 tokens/s; transformers-chat: accuracy 0.950, 50.0 tokens/s)."
    )
    assert explain_choice(candidates(0.80, 0.95), SelectionRule(), onnx_gap(gap(-0.15, -0.2, -0.1))) == (
        "transformers-chat chosen by rule best_accuracy: highest accuracy, ties broken by tokens/s; onnx-chat - "
        "transformers-chat accuracy -0.150 [-0.200, -0.100] (95%) (onnx-chat: accuracy 0.800, 300.0 tokens/s; "
        "transformers-chat: accuracy 0.950, 50.0 tokens/s)."
    )


def test_the_champion_itself_is_an_exact_zero_difference_and_an_exact_ratio_of_one():
    onnx = candidates()["onnx-chat"]
    itself = evidence(onnx, {}, measured=None, champion_uri="models:/m-onnx")
    assert (itself.version, itself.accuracy, itself.latency_ratio) == (
        "1",
        Interval(0.0, 0.0, 0.0, 0.95),
        Interval(1.0, 1.0, 1.0, 0.95),
    )
    passed = gate_results(onnx, Gates(max_accuracy_regression=0.05, max_latency_regression=0.25), itself)
    assert [r.text for r in passed[2:]] == [
        "accuracy - champion +0.000 [+0.000, +0.000] (95%), lower bound above -0.050, against champion version 1 "
        "(is this very model)",
        "latency / champion median ratio 1.000 [1.000, 1.000] (95%), upper bound below 1.250, against champion "
        "version 1 (is this very model)",
    ]


def test_the_other_flavor_as_champion_turns_the_whole_pair_and_needs_both_intervals():
    transformers = candidates()["transformers-chat"]
    turned = evidence(transformers, PAIRED, measured=None, champion_uri="models:/m-onnx")
    assert turned.version == "1"
    assert turned.accuracy == Interval(0.05, 0.01, 0.08, 0.95)
    assert turned.latency_ratio == Interval(2.0, 1.6, 2.5, 0.95)
    onnx = candidates()["onnx-chat"]  # the ONNX candidate against a transformers champion: the pair as logged
    straight = evidence(onnx, PAIRED, measured=None, champion_uri="models:/m-tf")
    assert (straight.accuracy, straight.latency_ratio) == (
        Interval(-0.05, -0.08, -0.01, 0.95),
        Interval(0.5, 0.4, 0.625, 0.95),
    )
    accuracy_only = {k: v for k, v in PAIRED.items() if k.startswith("onnx_vs_transformers/accuracy")}
    half = evidence(transformers, accuracy_only, measured=None, champion_uri="models:/m-onnx")
    assert half.accuracy is None and half.how.startswith("not measured in this run")


def test_a_champion_that_recorded_no_metrics_is_compared_with_zero_accuracy_and_no_latency():
    gates = {"max_accuracy_regression": 0.25, "max_latency_regression": 0.5}
    results = fallback_gates({"accuracy": 0.5, "latency_p50_s": 0.1}, {}, **gates)
    assert results["max_accuracy_regression"].passed
    assert results["max_accuracy_regression"].text.startswith(
        "accuracy 0.500 - champion's recorded 0.000 = +0.500, above -0.250"
    )
    assert results["max_latency_regression"].passed
    recorded_latency_only = fallback_gates({"accuracy": 0.5, "latency_p50_s": 0.1}, {"latency_p50_s": 1.0}, **gates)
    assert "champion's recorded 0.000 = +0.500, above" in recorded_latency_only["max_accuracy_regression"].text


def test_paired_verdicts_name_a_pass_too():
    onnx = candidates()["onnx-chat"]
    gates = Gates(max_accuracy_regression=0.05, max_latency_regression=0.5)
    [accuracy, latency] = gate_results(onnx, gates, evidence(onnx, PAIRED))[2:]
    assert accuracy.passed and "lower bound above -0.050, against champion version 1" in accuracy.text
    assert latency.passed and latency.text == (
        "latency / champion median ratio 1.300 [1.200, 1.400] (95%), upper bound below 1.500, against champion "
        "version 1 (measured in this run on the same items)"
    )


def test_the_gates_summary_names_each_configured_gate():
    assert gates_summary(Gates(min_accuracy=0.5, min_tokens_per_second=2.5, max_latency_regression=0.25)) == (
        "min_accuracy 0.50, min_tokens_per_second 2.5, max_accuracy_regression 0.05 (paired lower bound), "
        "max_latency_regression 0.25 (paired upper bound)"
    )
    assert gates_summary(Gates(max_accuracy_regression=None)) == "min_accuracy 0.00, min_tokens_per_second 0"


def test_prefer_onnx_also_needs_items_enough_for_its_margin():
    tiny = load_config(PROJECT_DIR / "configs" / "tiny.yaml")

    def with_selection(rule: str) -> list[str]:
        selection = SelectionRule(rule=rule, onnx_accuracy_margin=0.05)
        registry = tiny.registry.model_copy(
            update={"selection": selection, "gates": Gates(max_accuracy_regression=None)}
        )
        return margin_problems(tiny.model_copy(update={"registry": registry}), 24)

    [problem] = with_selection("prefer_onnx")
    assert problem.startswith("registry.selection.onnx_accuracy_margin 0.05 needs at least 231 eval items")
    assert with_selection("best_accuracy") == []


def test_every_unresolvable_margin_is_named_in_one_refusal():
    tiny = load_config(PROJECT_DIR / "configs" / "tiny.yaml")
    registry = tiny.registry.model_copy(
        update={"selection": SelectionRule(rule="prefer_onnx", onnx_accuracy_margin=0.1), "gates": Gates()}
    )
    with pytest.raises(ConfigError) as refused:
        check_margins_resolvable(tiny.model_copy(update={"registry": registry}), 24)
    assert (
        "the eval items are 24: add items or widen the margin; registry.selection.onnx_accuracy_margin 0.1 needs"
        in (str(refused.value))
    )


# Several source.builder variants: the fastest ONNX variant non-inferior to the most accurate candidate.
B32, B16, TF = "onnx-chat-int4-b32", "onnx-chat-int4-b16", "transformers-chat"


def variants(b32=(0.90, 200.0), b16=(0.92, 150.0), transformers=(0.95, 50.0)) -> dict[str, Candidate]:
    measured = {B32: b32, B16: b16, TF: transformers}
    return {
        name: Candidate(name, f"models:/m-{index}", {**GOOD, "accuracy": accuracy, "tokens_per_second": speed})
        for index, (name, (accuracy, speed)) in enumerate(measured.items())
    }


def logged(**lows: float):
    """A gap function reading `delta/<pair>/accuracy` metrics as evaluate logs them: `b32_tf=-0.04` is the pair
    onnx-chat-int4-b32_vs_transformers-chat with that lower bound, the estimate 0.02 and the upper bound 0.04 above."""
    names = {"b32": B32, "b16": B16, "tf": TF}
    comparisons = {}
    for key, low in lows.items():
        candidate, baseline = (names[part] for part in key.split("_"))
        pair = f"{candidate}_vs_{baseline}"
        comparisons |= {
            f"{pair}/accuracy": low + 0.02,
            f"{pair}/accuracy_ci_low": low,
            f"{pair}/accuracy_ci_high": low + 0.04,
        }
    return lambda candidate, baseline: paired_between(comparisons, candidate, baseline, "accuracy", 0.95)


def test_the_fastest_variant_non_inferior_to_the_most_accurate_is_chosen():
    assert choose_candidate(variants(), RULE, logged(b32_tf=-0.049, b16_tf=-0.03)).flavor == B32


def test_a_lower_bound_exactly_on_the_margin_is_not_non_inferior():
    assert choose_candidate(variants(), RULE, logged(b32_tf=-0.05, b16_tf=-0.03)).flavor == B16
    assert choose_candidate(variants(), RULE, logged(b32_tf=-0.05, b16_tf=-0.05)).flavor == TF


def test_with_no_variant_measured_or_non_inferior_the_most_accurate_is_chosen():
    assert choose_candidate(variants(), RULE, logged()).flavor == TF
    assert choose_candidate(variants(), RULE, logged(b32_tf=-0.2, b16_tf=-0.1)).flavor == TF


def test_when_a_variant_is_the_most_accurate_a_faster_non_inferior_one_still_wins():
    most_accurate_b16 = variants(b16=(0.97, 150.0))
    # Logged as b16 - b32 only, read the other way round: b32 - b16 lies in [-0.11, -0.07], beyond the margin.
    assert choose_candidate(most_accurate_b16, RULE, logged(b16_b32=0.07)).flavor == B16
    # b32 - b16 in [-0.04, 0.0]: within it, and b32 is faster.
    assert choose_candidate(most_accurate_b16, RULE, logged(b16_b32=0.0)).flavor == B32


def test_equally_fast_non_inferior_variants_go_to_the_more_accurate():
    tied = variants(b32=(0.90, 200.0), b16=(0.92, 200.0))
    assert choose_candidate(tied, RULE, logged(b32_tf=-0.04, b16_tf=-0.03)).flavor == B16


def test_best_accuracy_ignores_the_margin_among_variants():
    assert choose_candidate(variants(), SelectionRule(), logged(b32_tf=-0.01, b16_tf=-0.01)).flavor == TF


def test_the_variant_choice_is_explained_with_its_interval():
    reason = explain_choice(variants(), RULE, logged(b32_tf=-0.049, b16_tf=-0.03))
    assert reason.startswith(
        f"{B32} chosen by rule prefer_onnx: the fastest ONNX model non-inferior to the most accurate ({TF}): "
        f"{B32} - {TF} accuracy -0.029 [-0.049, -0.009] (95%) lies above -0.05 ("
    )
    assert f"{B16}: accuracy 0.920, 150.0 tokens/s" in reason
    fallback = explain_choice(variants(), RULE, logged(b32_tf=-0.2))
    assert f"{B32} - {TF} accuracy -0.180 [-0.200, -0.160] (95%) reaches -0.05; {B16} - {TF} accuracy not measured" in (
        fallback
    )
    most_accurate_onnx = explain_choice(variants(b32=(0.99, 200.0)), RULE, logged(b16_b32=-0.2))
    assert most_accurate_onnx.startswith(
        f"{B32} chosen by rule prefer_onnx: highest accuracy, ties broken by tokens/s, and no faster ONNX model is "
        f"shown non-inferior to it ({B16} - {B32} accuracy"
    )


def test_a_pair_logged_the_other_way_round_is_turned():
    comparisons = {
        "a_vs_b/accuracy": 0.1,
        "a_vs_b/accuracy_ci_low": -0.05,
        "a_vs_b/accuracy_ci_high": 0.2,
        "a_vs_b/latency_ratio": 0.5,
        "a_vs_b/latency_ratio_ci_low": 0.4,
        "a_vs_b/latency_ratio_ci_high": 0.8,
    }
    assert paired_between(comparisons, "a", "b", "accuracy", 0.95) == Interval(0.1, -0.05, 0.2, 0.95)
    assert paired_between(comparisons, "b", "a", "accuracy", 0.95) == Interval(-0.1, -0.2, 0.05, 0.95)
    assert paired_between(comparisons, "b", "a", "latency_ratio", 0.95) == Interval(2.0, 1.25, 2.5, 0.95)
    assert paired_between(comparisons, "a", "c", "accuracy", 0.95) is None
    identical = {"a_vs_b/accuracy": 0.0, "a_vs_b/accuracy_ci_low": 0.0, "a_vs_b/accuracy_ci_high": 0.0}
    assert str(paired_between(identical, "b", "a", "accuracy", 0.95)) == "+0.000 [+0.000, +0.000] (95%)"
