"""The registry's decisions as pure rules: which candidate to pick, and which gates it misses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slmflow import tags
from slmflow.config import Gates, SelectionRule

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Candidate:
    flavor: str
    model_uri: str
    metrics: Metrics


def choose_candidate(candidates: Mapping[str, Candidate], rule: SelectionRule) -> Candidate:
    """Highest accuracy, ties broken by tokens/s; or the ONNX model when within the configured margin."""
    best = max(candidates.values(), key=lambda c: (c.metrics["accuracy"], c.metrics["tokens_per_second"]))
    onnx = candidates.get(tags.ONNX_MODEL_NAME)
    within_margin = (
        onnx is not None and onnx.metrics["accuracy"] >= best.metrics["accuracy"] - rule.onnx_accuracy_margin
    )
    return onnx if rule.rule == "prefer_onnx" and within_margin else best


def explain_choice(candidates: Mapping[str, Candidate], rule: SelectionRule) -> str:
    """Why `choose_candidate` picks what it picks, naming each candidate's accuracy and speed, for a person."""
    chosen = choose_candidate(candidates, rule)
    measured = "; ".join(
        f"{c.flavor}: accuracy {c.metrics['accuracy']:.3f}, {c.metrics['tokens_per_second']:.1f} tokens/s"
        for c in candidates.values()
    )
    best = max(candidates.values(), key=lambda c: (c.metrics["accuracy"], c.metrics["tokens_per_second"]))
    if rule.rule == "prefer_onnx" and chosen.flavor == tags.ONNX_MODEL_NAME and best is not chosen:
        why = f"the ONNX model is within the accuracy margin {rule.onnx_accuracy_margin:.2f} of {best.flavor}"
    elif rule.rule == "prefer_onnx" and chosen.flavor == tags.ONNX_MODEL_NAME:
        why = "the ONNX model is preferred and is also the most accurate"
    else:
        why = "highest accuracy, ties broken by tokens/s"
    return f"{chosen.flavor} chosen by rule {rule.rule}: {why} ({measured})."


def gate_failures(metrics: Metrics, gates: Gates, champion: Metrics | None) -> list[str]:
    """Every gate the candidate misses, each naming the numbers."""
    failures = []
    if metrics["accuracy"] < gates.min_accuracy:
        failures.append(f"accuracy {metrics['accuracy']:.3f} < min_accuracy {gates.min_accuracy:.3f}")
    if metrics["tokens_per_second"] < gates.min_tokens_per_second:
        failures.append(
            f"tokens_per_second {metrics['tokens_per_second']:.1f} < min_tokens_per_second "
            f"{gates.min_tokens_per_second:.1f}"
        )
    if champion and "accuracy" in champion:
        floor = champion["accuracy"] - gates.max_accuracy_regression
        if metrics["accuracy"] < floor:
            failures.append(
                f"accuracy {metrics['accuracy']:.3f} regresses against the champion's "
                f"{champion['accuracy']:.3f} by more than max_accuracy_regression {gates.max_accuracy_regression:.3f}"
            )
    if champion and gates.max_latency_regression is not None and "latency_p50_s" in champion:
        ceiling = champion["latency_p50_s"] * (1 + gates.max_latency_regression)
        if metrics["latency_p50_s"] > ceiling:
            failures.append(
                f"latency_p50_s {metrics['latency_p50_s']:.4f} exceeds the champion's "
                f"{champion['latency_p50_s']:.4f} by more than max_latency_regression "
                f"{gates.max_latency_regression:.2f}"
            )
    return failures


def gates_summary(gates: Gates) -> str:
    parts = [f"min_accuracy {gates.min_accuracy:.2f}", f"min_tokens_per_second {gates.min_tokens_per_second:g}"]
    parts.append(f"max_accuracy_regression {gates.max_accuracy_regression:.2f}")
    if gates.max_latency_regression is not None:
        parts.append(f"max_latency_regression {gates.max_latency_regression:.2f}")
    return ", ".join(parts)
