"""The evaluation's statistics as MLflow metric names: each model's accuracy with its interval and per
skill, and the paired differences (candidate - champion, between candidates). Pure: reports in, numbers out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

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


class BootstrapOptions(TypedDict):
    confidence: float
    resamples: int
    seed: int


def bootstrap_options(evaluation: EvaluationConfig) -> BootstrapOptions:
    """The paired statistics' settings from the evaluation section, the same for every pair."""
    return {"confidence": evaluation.confidence, "resamples": evaluation.bootstrap_resamples, "seed": evaluation.seed}


def paired_metrics(candidate: ModelReport, baseline: ModelReport, evaluation: EvaluationConfig) -> dict[str, float]:
    """candidate - baseline on the same items: accuracy difference with its interval and McNemar p-value,
    and the median per-item latency ratio with its interval (names without the `delta/<pair>/` prefix)."""
    options = bootstrap_options(evaluation)
    accuracy = paired_accuracy([r.correct for r in candidate.results], [r.correct for r in baseline.results], **options)
    # Latency is per request: only the items both models answered alone (all, or the same latency sample).
    timed = [
        (c.latency_s, b.latency_s)
        for c, b in zip(candidate.results, baseline.results, strict=True)
        if c.latency_s is not None and b.latency_s is not None
    ]
    latency = paired_latency_ratio([c for c, _ in timed], [b for _, b in timed], **options)
    return {
        **interval_metrics("accuracy", accuracy.difference),
        "mcnemar_p": accuracy.p_value,
        "candidate_only_correct": float(accuracy.candidate_only),
        "baseline_only_correct": float(accuracy.baseline_only),
        **interval_metrics("latency_ratio", latency),
    }


def comparison_metrics(
    candidates: Mapping[str, ModelReport],
    champion: ModelReport | None,
    evaluation: EvaluationConfig,
    bases: Mapping[str, ModelReport] | None = None,
) -> dict[str, float]:
    """Every paired comparison the gates read, under `delta/<pair>/...`; `bases` holds the base model (before
    fine-tuning) by the candidate flavor it was measured in: each candidate is compared with its own flavor's."""
    models = dict(candidates) | ({} if champion is None else {tags.CHAMPION_MODEL_NAME: champion})
    pairs = {pair: (models[candidate], models[baseline]) for pair, (candidate, baseline) in model_pairs(models).items()}
    for name, base in (bases or {}).items():
        if name in candidates:
            pairs[tags.versus_base(name)] = (candidates[name], base)
    return {
        f"{tags.DELTA_PREFIX}{pair}/{key}": value
        for pair, (candidate, baseline) in pairs.items()
        for key, value in paired_metrics(candidate, baseline, evaluation).items()
    }


def model_pairs(models: Mapping[str, object]) -> dict[str, tuple[str, str]]:
    """The compared pairs among these model names: every candidate against every later one (onnx against
    transformers; each ONNX variant against the other variants and transformers), every candidate against the
    champion (when there is one): pair name -> (candidate, baseline)."""
    others = [name for name in models if name != tags.CHAMPION_MODEL_NAME]
    pairs = {
        tags.versus(candidate, baseline): (candidate, baseline)
        for index, candidate in enumerate(others)
        for baseline in others[index + 1 :]
    }
    if tags.CHAMPION_MODEL_NAME in models:
        pairs.update({tags.versus_champion(name): (name, tags.CHAMPION_MODEL_NAME) for name in others})
    return pairs


def lm_eval_metrics(scores: Mapping[str, Sequence[bool]], evaluation: EvaluationConfig) -> dict[str, float]:
    """An lm-eval task's per-item scores through the same statistics: `<model>/lm_eval/accuracy` with its
    interval, and `delta/<pair>/lm_eval/accuracy` with its paired interval and McNemar p-value."""
    options = bootstrap_options(evaluation)
    metrics = {}
    for name, correct in scores.items():
        interval = proportion_interval(list(correct), evaluation.confidence)
        for key, value in interval_metrics("accuracy", interval).items():
            metrics[f"{name}/lm_eval/{key}"] = value
        metrics[f"{name}/lm_eval/items"] = float(len(correct))
    for pair, (candidate, baseline) in model_pairs(scores).items():
        paired = paired_accuracy(list(scores[candidate]), list(scores[baseline]), **options)
        prefix = f"{tags.DELTA_PREFIX}{pair}/lm_eval/"
        metrics.update({prefix + key: value for key, value in interval_metrics("accuracy", paired.difference).items()})
        metrics[prefix + "mcnemar_p"] = paired.p_value
    return metrics
