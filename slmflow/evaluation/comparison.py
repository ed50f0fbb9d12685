"""The evaluation's statistics as MLflow metric names: each model's accuracy with its interval and per
skill, and the paired differences (candidate - champion, onnx - transformers). Pure: reports in, numbers out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slmflow import tags
from slmflow.config import EvaluationConfig
from slmflow.evaluation.answers import skill_accuracy
from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.metrics import ModelReport
from slmflow.evaluation.statistics import Interval, paired_accuracy, paired_latency_ratio, proportion_interval


def interval_metrics(name: str, interval: Interval) -> dict[str, float]:
    """`name`, `name_ci_low`, `name_ci_high`."""
    return {name: interval.estimate, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}


def model_metrics(report: ModelReport, examples: Sequence[EvalExample], confidence: float) -> dict[str, float]:
    """A model's metrics (plain names): accuracy with its interval, accuracy per skill, the rest."""
    correct = [r.correct for r in report.results]
    metrics = {**report.metrics(), **interval_metrics("accuracy", proportion_interval(correct, confidence))}
    for skill, accuracy in skill_accuracy([e.skill for e in examples], correct).items():
        metrics[f"accuracy/{skill}"] = accuracy
    return metrics


def paired_metrics(candidate: ModelReport, baseline: ModelReport, evaluation: EvaluationConfig) -> dict[str, float]:
    """candidate - baseline on the same items: accuracy difference with its interval and McNemar p-value,
    and the median per-item latency ratio with its interval (names without the `delta/<pair>/` prefix)."""
    confidence, resamples, seed = evaluation.confidence, evaluation.bootstrap_resamples, evaluation.seed
    accuracy = paired_accuracy(
        [r.correct for r in candidate.results],
        [r.correct for r in baseline.results],
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    latency = paired_latency_ratio(
        [r.latency_s for r in candidate.results],
        [r.latency_s for r in baseline.results],
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    return {
        **interval_metrics("accuracy", accuracy.difference),
        "mcnemar_p": accuracy.p_value,
        "candidate_only_correct": float(accuracy.candidate_only),
        "baseline_only_correct": float(accuracy.baseline_only),
        **interval_metrics("latency_ratio", latency),
    }


def comparison_metrics(
    candidates: Mapping[str, ModelReport], champion: ModelReport | None, evaluation: EvaluationConfig
) -> dict[str, float]:
    """Every paired comparison the gates read, under `delta/<pair>/...`."""
    pairs: dict[str, tuple[ModelReport, ModelReport]] = {}
    onnx, transformers = candidates.get(tags.ONNX_MODEL_NAME), candidates.get(tags.TRANSFORMERS_MODEL_NAME)
    if onnx is not None and transformers is not None:
        pairs[tags.ONNX_VS_TRANSFORMERS] = (onnx, transformers)
    if champion is not None:
        pairs.update({tags.versus_champion(name): (report, champion) for name, report in candidates.items()})
    return {
        f"{tags.DELTA_PREFIX}{pair}/{key}": value
        for pair, (candidate, baseline) in pairs.items()
        for key, value in paired_metrics(candidate, baseline, evaluation).items()
    }
