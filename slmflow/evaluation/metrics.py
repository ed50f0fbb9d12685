"""Scoring answers and summarising a model's measurements; pure functions, no model and no MLflow."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slmflow.chat.response import answer_text, single_prediction
from slmflow.evaluation.answers import normalize, reads_correct
from slmflow.evaluation.dataset import EvalExample


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def contains_answer(prediction: str, answer: str) -> bool:
    """Word-bounded substring test: a quick check for a known answer, blind to rivals (use reads_correct)."""
    return f" {normalize(answer)} " in f" {normalize(prediction)} "


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ExampleResult:
    answer: str
    latency_s: float | None  # one request's latency; None for an item answered only in a batch
    completion_tokens: int
    correct: bool
    exact: bool
    rouge_l: float


@dataclass
class ModelReport:
    name: str
    model_uri: str
    load_seconds: float
    peak_rss_mb: float
    size_mb: float
    results: list[ExampleResult]
    ttft_s: list[float] = field(default_factory=list)
    answer_seconds: float = 0.0  # the accuracy pass over every item
    batch_size: int = 1
    batch_mismatches: int = 0  # timed items whose one-by-one answer differs from the batched one

    def metrics(self) -> dict[str, float]:
        timed = [r for r in self.results if r.latency_s is not None]
        latencies = [r.latency_s for r in timed if r.latency_s is not None]
        tokens = sum(r.completion_tokens for r in self.results)
        timed_tokens = sum(r.completion_tokens for r in timed)
        metrics = {
            "accuracy": statistics.fmean(r.correct for r in self.results),
            "exact_match": statistics.fmean(r.exact for r in self.results),
            "rouge_l": statistics.fmean(r.rouge_l for r in self.results),
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95),
            # one request's decoding rate, from the items timed one at a time
            "tokens_per_second": timed_tokens / sum(latencies) if sum(latencies) else 0.0,
            "completion_tokens": float(tokens),
            "answer_seconds": self.answer_seconds,
            "eval_tokens_per_second": tokens / self.answer_seconds if self.answer_seconds else 0.0,
            "eval_batch_size": float(self.batch_size),
            "batch_mismatches": float(self.batch_mismatches),
            "load_seconds": self.load_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "size_mb": self.size_mb,
        }
        if self.ttft_s:
            metrics["ttft_p50_s"] = percentile(self.ttft_s, 0.5)
        return metrics


def completion_tokens(prediction: Any) -> int:
    prediction = single_prediction(prediction)
    if isinstance(prediction, dict):
        return int(prediction.get("usage", {}).get("completion_tokens", 0))
    return 0


def score_example(example: EvalExample, prediction: Any, latency_s: float | None) -> ExampleResult:
    text = answer_text(prediction)
    return ExampleResult(
        answer=text,
        latency_s=latency_s,
        completion_tokens=completion_tokens(prediction),
        correct=reads_correct(text, example.key, example.question),
        exact=exact_match(text, example.reference),
        rouge_l=rouge_l(text, example.reference),
    )


def agreement_rate(first: ModelReport, second: ModelReport) -> float:
    pairs = zip(first.results, second.results, strict=True)
    return statistics.fmean(normalize(a.answer) == normalize(b.answer) for a, b in pairs)
