"""Paired statistics for comparing two models answered on the same items: pure functions, seeded.

Two models asked the same questions disagree on few items; comparing them item by item (paired)
resolves a far smaller difference than comparing two accuracies measured apart. The accuracy
difference gets an exact McNemar p-value and a seeded paired-bootstrap interval; latencies get the
median of per-item ratios with a bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval at a confidence level."""

    estimate: float
    low: float
    high: float
    confidence: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({self.confidence:.0%})"


@dataclass(frozen=True)
class PairedAccuracy:
    """candidate - baseline accuracy on the same items."""

    difference: Interval
    p_value: float  # exact McNemar, two-sided
    candidate_only: int  # items only the candidate got right
    baseline_only: int  # items only the baseline got right
    items: int


def mcnemar_exact_p(candidate_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar test: how likely a split of the discordant items this uneven is when
    neither model is better (each discordant item a fair coin)."""
    discordant = candidate_only + baseline_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(candidate_only, baseline_only) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def _bootstrap_indices(items: int, resamples: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, items, size=(resamples, items))


def _quantiles(values, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def paired_accuracy(
    candidate: Sequence[bool],
    baseline: Sequence[bool],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedAccuracy:
    """candidate - baseline accuracy with a percentile paired-bootstrap interval (items resampled together)."""
    import numpy as np

    if len(candidate) != len(baseline) or not candidate:
        raise ValueError(f"paired accuracy needs the same non-empty items: {len(candidate)} and {len(baseline)}")
    differences = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    means = differences[_bootstrap_indices(len(differences), resamples, seed)].mean(axis=1)
    low, high = _quantiles(means, confidence)
    candidate_only = int((differences > 0).sum())
    baseline_only = int((differences < 0).sum())
    return PairedAccuracy(
        Interval(float(differences.mean()), low, high, confidence),
        mcnemar_exact_p(candidate_only, baseline_only),
        candidate_only,
        baseline_only,
        len(differences),
    )


def paired_latency_ratio(
    candidate: Sequence[float],
    baseline: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The median of per-item candidate / baseline latency ratios, with a bootstrap interval."""
    import numpy as np

    if len(candidate) != len(baseline) or not candidate:
        raise ValueError(f"paired latencies need the same non-empty items: {len(candidate)} and {len(baseline)}")
    ratios = np.asarray(candidate, dtype=float) / np.maximum(np.asarray(baseline, dtype=float), 1e-9)
    medians = np.median(ratios[_bootstrap_indices(len(ratios), resamples, seed)], axis=1)
    low, high = _quantiles(medians, confidence)
    return Interval(float(np.median(ratios)), low, high, confidence)


def proportion_interval(correct: Sequence[bool], confidence: float = 0.95) -> Interval:
    """Wilson score interval of one model's accuracy (exact enough at 0 and 1, unlike the normal one)."""
    n = len(correct)
    if n == 0:
        raise ValueError("accuracy of no items")
    p = sum(correct) / n
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence)


def items_needed(margin: float, confidence: float, discordance: float) -> int:
    """Items for a paired interval on an accuracy difference to be narrower than `margin` on each side
    when two equally good models disagree on a `discordance` fraction of them: z^2 * d / margin^2."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return math.ceil(z * z * discordance / (margin * margin))
