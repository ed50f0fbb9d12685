"""The registry's decisions as pure rules: which candidate to pick, and which gates it misses.

Comparisons between models are paired (measured on the same items in the same run) and read as
intervals: a candidate is not worse than the champion when the whole interval on candidate - champion
accuracy lies above -max_accuracy_regression (non-inferiority). When the champion could not be
measured in the run, the gates fall back to its recorded metrics and say so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from slmflow import tags
from slmflow.config import Gates, PipelineConfig, SelectionRule
from slmflow.errors import ConfigError
from slmflow.evaluation.statistics import Interval, items_needed

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Candidate:
    flavor: str
    model_uri: str
    metrics: Metrics


def paired_interval(comparisons: Metrics, pair: str, statistic: str, confidence: float) -> Interval | None:
    """`delta/<pair>/<statistic>` with its `_ci_low` and `_ci_high`, as the evaluate run logged them."""
    name = f"{pair}/{statistic}"
    if name not in comparisons:
        return None
    return Interval(comparisons[name], comparisons[f"{name}_ci_low"], comparisons[f"{name}_ci_high"], confidence)


def paired_between(
    comparisons: Metrics, candidate: str, baseline: str, statistic: str, confidence: float
) -> Interval | None:
    """candidate against baseline (`accuracy`: the difference, `latency_ratio`: the ratio), whichever way round
    evaluate logged the pair."""
    logged = paired_interval(comparisons, tags.versus(candidate, baseline), statistic, confidence)
    if logged is not None:
        return logged
    turned = paired_interval(comparisons, tags.versus(baseline, candidate), statistic, confidence)
    if turned is None:
        return None
    if statistic == "latency_ratio":
        return Interval(1 / turned.estimate, 1 / turned.high, 1 / turned.low, confidence)
    return Interval(0.0 - turned.estimate, 0.0 - turned.high, 0.0 - turned.low, confidence)  # 0.0 - x: never -0.0


# (candidate, baseline) -> the paired interval on candidate - baseline accuracy, None when not measured.
AccuracyGap = Callable[[str, str], Interval | None]


def _best(candidates: Mapping[str, Candidate]) -> Candidate:
    return max(candidates.values(), key=lambda c: (c.metrics["accuracy"], c.metrics["tokens_per_second"]))


def _is_onnx(candidate: Candidate) -> bool:
    return tags.flavor_of(candidate.flavor) == tags.ONNX_MODEL_NAME


def _fastest(candidates: list[Candidate]) -> Candidate:
    return max(candidates, key=lambda c: (c.metrics["tokens_per_second"], c.metrics["accuracy"]))


def non_inferior(gap: Interval | None, rule: SelectionRule) -> bool:
    """At most onnx_accuracy_margin less accurate, at the interval's confidence (a lower bound on the margin
    is not shown non-inferior); an unmeasured gap never is."""
    return gap is not None and gap.low > -rule.onnx_accuracy_margin


@dataclass(frozen=True)
class Selection:
    """The chosen candidate, the most accurate one, and each other ONNX model's gap to the most accurate."""

    chosen: Candidate
    most_accurate: Candidate
    gaps: dict[str, Interval | None]


def select_candidate(candidates: Mapping[str, Candidate], rule: SelectionRule, accuracy_gap: AccuracyGap) -> Selection:
    """The most accurate candidate (ties broken by tokens/s); with prefer_onnx, the fastest ONNX model (of one or
    several variants) that is non-inferior to it, the most accurate itself counting when it is an ONNX model."""
    best = _best(candidates)
    onnx = [c for c in candidates.values() if _is_onnx(c)]
    gaps = {c.flavor: accuracy_gap(c.flavor, best.flavor) for c in onnx if c.flavor != best.flavor}
    if rule.rule != "prefer_onnx":
        return Selection(best, best, gaps)
    eligible = [c for c in onnx if c.flavor == best.flavor or non_inferior(gaps[c.flavor], rule)]
    return Selection(_fastest(eligible) if eligible else best, best, gaps)


def choose_candidate(candidates: Mapping[str, Candidate], rule: SelectionRule, accuracy_gap: AccuracyGap) -> Candidate:
    return select_candidate(candidates, rule, accuracy_gap).chosen


def explain_choice(candidates: Mapping[str, Candidate], rule: SelectionRule, accuracy_gap: AccuracyGap) -> str:
    """Why `choose_candidate` picks what it picks, naming each candidate's accuracy, speed and the paired gaps."""
    selection = select_candidate(candidates, rule, accuracy_gap)
    chosen, best = selection.chosen, selection.most_accurate
    measured = "; ".join(
        f"{c.flavor}: accuracy {c.metrics['accuracy']:.3f}, {c.metrics['tokens_per_second']:.1f} tokens/s"
        for c in candidates.values()
    )
    margin = f"-{rule.onnx_accuracy_margin:.2f}"

    def gap(name: str) -> str:
        interval = selection.gaps[name]
        if interval is None:
            return f"{name} - {best.flavor} accuracy not measured"
        return f"{name} - {best.flavor} accuracy {interval}"

    def verdict(name: str) -> str:
        if selection.gaps[name] is None:
            return gap(name)
        return f"{gap(name)} {'lies above' if non_inferior(selection.gaps[name], rule) else 'reaches'} {margin}"

    gaps = "; ".join(verdict(name) for name in selection.gaps)
    highest = "highest accuracy, ties broken by tokens/s"
    if rule.rule != "prefer_onnx":
        why = highest + (f"; {'; '.join(gap(name) for name in selection.gaps)}" if selection.gaps else "")
    elif chosen.flavor != best.flavor:
        why = f"the fastest ONNX model non-inferior to the most accurate ({best.flavor}): {verdict(chosen.flavor)}"
    elif _is_onnx(chosen):
        why = f"{highest}, and no faster ONNX model is shown non-inferior to it" + (f" ({gaps})" if gaps else "")
    else:
        why = f"no ONNX model is shown non-inferior to the most accurate ({gaps or 'none measured'}); {highest}"
    return f"{chosen.flavor} chosen by rule {rule.rule}: {why} ({measured})."


@dataclass(frozen=True)
class ChampionEvidence:
    """How the candidate compares with the champion: paired intervals, or (fallback) recorded metrics."""

    version: str
    how: str  # for a person: "measured in this run", "is this very model", or why it fell back
    accuracy: Interval | None = None  # candidate - champion, paired
    latency_ratio: Interval | None = None  # candidate / champion, paired median
    recorded: Metrics | None = None  # the champion's metrics from its version's tags (fallback only)


def champion_evidence(
    version: str,
    champion_model_uri: str,
    recorded: Metrics,
    candidate: Candidate,
    candidates: Mapping[str, Candidate],
    comparisons: Metrics,
    measured_champion: str | None,
    champion_error: str | None,
    confidence: float,
) -> ChampionEvidence:
    """The best comparison with champion `version` that the evaluate run holds, falling back to its tags."""
    if champion_model_uri == candidate.model_uri:
        zero, one = Interval(0.0, 0.0, 0.0, confidence), Interval(1.0, 1.0, 1.0, confidence)
        return ChampionEvidence(version, "is this very model", zero, one)
    others = [c for c in candidates.values() if c.model_uri == champion_model_uri]
    if others:  # the champion is another candidate of this run: the paired gap between the two
        accuracy = paired_between(comparisons, candidate.flavor, others[0].flavor, "accuracy", confidence)
        latency = paired_between(comparisons, candidate.flavor, others[0].flavor, "latency_ratio", confidence)
        if accuracy is not None and latency is not None:
            return ChampionEvidence(version, f"is the {others[0].flavor} model of this run", accuracy, latency)
    pair = tags.versus_champion(candidate.flavor)
    accuracy = paired_interval(comparisons, pair, "accuracy", confidence)
    latency = paired_interval(comparisons, pair, "latency_ratio", confidence)
    if measured_champion is not None and measured_champion.endswith(f"/{version}") and accuracy and latency:
        return ChampionEvidence(version, "measured in this run on the same items", accuracy, latency)
    why = champion_error or f"version {version} was not measured in this run"
    return ChampionEvidence(
        version, f"not measured in this run ({why}); compared with its recorded metrics", recorded=recorded
    )


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    text: str  # the statistic, its interval and the threshold, for a person


def gate_results(candidate: Candidate, gates: Gates, champion: ChampionEvidence | None) -> list[GateResult]:
    """Every configured gate with its verdict; the champion gates only when there is a champion."""
    metrics = candidate.metrics
    accuracy = (
        f"accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}]"
        if "accuracy_ci_low" in metrics
        else f"accuracy {metrics['accuracy']:.3f}"
    )
    results = [
        GateResult(
            "min_accuracy",
            metrics["accuracy"] >= gates.min_accuracy,
            f"{accuracy} {'>=' if metrics['accuracy'] >= gates.min_accuracy else '<'} "
            f"min_accuracy {gates.min_accuracy:.3f}",
        ),
        GateResult(
            "min_tokens_per_second",
            metrics["tokens_per_second"] >= gates.min_tokens_per_second,
            f"tokens_per_second {metrics['tokens_per_second']:.1f} "
            f"{'>=' if metrics['tokens_per_second'] >= gates.min_tokens_per_second else '<'} "
            f"min_tokens_per_second {gates.min_tokens_per_second:.1f}",
        ),
    ]
    if champion is None:
        return results
    against = f"against champion version {champion.version} ({champion.how})"
    if gates.max_accuracy_regression is not None:
        results.append(_accuracy_regression_gate(metrics, gates.max_accuracy_regression, champion, against))
    if gates.max_latency_regression is not None:
        results.append(_latency_regression_gate(metrics, gates.max_latency_regression, champion, against))
    return results


IMPROVEMENT_OVER_BASE = "improvement_over_base"


def improvement_over_base_gate(flavor: str, versus_base: Interval | None) -> GateResult:
    """training.require_improvement_over_base: the fine-tuned candidate must be significantly better than the base
    measured in its own flavor on the same items, i.e. the paired interval on candidate - base accuracy lies
    wholly above 0 (a lower bound of exactly 0 is not shown better). Unmeasured, it fails."""
    if versus_base is None:
        return GateResult(
            IMPROVEMENT_OVER_BASE,
            False,
            f"accuracy - base ({flavor}) was not measured in the evaluate run, so no improvement is shown",
        )
    passed = versus_base.low > 0
    return GateResult(
        IMPROVEMENT_OVER_BASE,
        passed,
        f"accuracy - base ({flavor}, not fine-tuned, same items) {versus_base}, lower bound "
        f"{'above' if passed else 'not above'} 0.000",
    )


def _accuracy_regression_gate(
    metrics: Metrics, max_regression: float, champion: ChampionEvidence, against: str
) -> GateResult:
    """Paired: the interval on candidate - champion lies above -max_regression; else the recorded accuracy."""
    floor = -max_regression
    if champion.accuracy is not None:
        passed = champion.accuracy.low > floor
        verdict = "above" if passed else "not above"
        text = f"accuracy - champion {champion.accuracy}, lower bound {verdict} {floor:.3f}, {against}"
    else:
        recorded = champion.recorded.get("accuracy", 0.0) if champion.recorded else 0.0
        passed = metrics["accuracy"] - recorded > floor
        text = (
            f"accuracy {metrics['accuracy']:.3f} - champion's recorded {recorded:.3f} = "
            f"{metrics['accuracy'] - recorded:+.3f}, {'above' if passed else 'not above'} {floor:.3f}, {against}"
        )
    return GateResult("max_accuracy_regression", passed, text)


def _latency_regression_gate(
    metrics: Metrics, max_regression: float, champion: ChampionEvidence, against: str
) -> GateResult:
    """Paired: the median ratio's upper bound is below 1 + max_regression; else the recorded p50 latency."""
    ceiling = 1 + max_regression
    if champion.latency_ratio is not None:
        ratio = champion.latency_ratio
        passed = ratio.high < ceiling
        text = (
            f"latency / champion median ratio {ratio.estimate:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] "
            f"({ratio.confidence:.0%}), upper bound {'below' if passed else 'not below'} {ceiling:.3f}, {against}"
        )
    elif (latency := metrics.get("latency_p50_s")) is None:  # nothing to compare: refuse rather than guess
        passed, text = False, f"the candidate has no latency_p50_s to compare, {against}"
    else:
        recorded = champion.recorded.get("latency_p50_s") if champion.recorded else None
        passed = recorded is None or latency < recorded * ceiling
        text = (
            f"latency_p50_s {latency:.4f} against the champion's recorded "
            f"{recorded if recorded is not None else float('nan'):.4f} x {ceiling:.3f}, {against}"
        )
    return GateResult("max_latency_regression", passed, text)


def gate_failures(results: list[GateResult]) -> list[str]:
    return [result.text for result in results if not result.passed]


def gates_summary(gates: Gates, require_improvement_over_base: bool = False) -> str:
    parts = [f"min_accuracy {gates.min_accuracy:.2f}", f"min_tokens_per_second {gates.min_tokens_per_second:g}"]
    if gates.max_accuracy_regression is not None:
        parts.append(f"max_accuracy_regression {gates.max_accuracy_regression:.2f} (paired lower bound)")
    if gates.max_latency_regression is not None:
        parts.append(f"max_latency_regression {gates.max_latency_regression:.2f} (paired upper bound)")
    if require_improvement_over_base:
        parts.append("improvement over the base (paired lower bound above 0)")
    return ", ".join(parts)


def margin_problems(config: PipelineConfig, items: int) -> list[str]:
    """Each configured margin the eval items are too few to resolve, saying how many it needs."""
    evaluation = config.evaluation
    margins = {}
    if config.registry.gates.max_accuracy_regression is not None:
        margins["registry.gates.max_accuracy_regression"] = config.registry.gates.max_accuracy_regression
    if config.registry.selection.rule == "prefer_onnx":
        margins["registry.selection.onnx_accuracy_margin"] = config.registry.selection.onnx_accuracy_margin
    problems = []
    for name, margin in margins.items():
        needed = items_needed(margin, evaluation.confidence, evaluation.assumed_discordance)
        if items < needed:
            problems.append(
                f"{name} {margin:g} needs at least {needed} eval items at confidence {evaluation.confidence:g} "
                f"(evaluation.assumed_discordance {evaluation.assumed_discordance:g}); the eval items are {items}: "
                "add items or widen the margin"
            )
    return problems


def check_margins_resolvable(config: PipelineConfig, items: int) -> None:
    problems = margin_problems(config, items)
    if problems:
        raise ConfigError("; ".join(problems))
