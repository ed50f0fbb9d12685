import math

import pytest

from slmflow.evaluation.statistics import (
    items_needed,
    mcnemar_exact_p,
    paired_accuracy,
    paired_latency_ratio,
    proportion_interval,
)


@pytest.mark.parametrize(
    ("candidate_only", "baseline_only", "p"),
    [
        (0, 0, 1.0),
        (1, 5, 14 / 64),  # 2 * (C(6,0) + C(6,1)) / 2^6
        (5, 1, 14 / 64),
        (0, 10, 2 / 1024),
        (3, 3, 1.0),
        (2, 12, 2 * (1 + 14 + 91) / 2**14),  # statsmodels mcnemar(exact=True): 0.012939...
    ],
)
def test_mcnemar_exact_p_values(candidate_only, baseline_only, p):
    assert mcnemar_exact_p(candidate_only, baseline_only) == pytest.approx(p)


def test_identical_answers_give_a_zero_width_interval_at_zero():
    same = [True, False, True, True] * 25
    result = paired_accuracy(same, same)
    assert (result.difference.estimate, result.difference.low, result.difference.high) == (0.0, 0.0, 0.0)
    assert result.p_value == 1.0


def test_the_seeded_bootstrap_is_reproducible_and_agrees_with_the_normal_interval():
    # 400 items: the candidate alone right on 30, the baseline alone on 10 (difference +0.05).
    candidate = [True] * 30 + [False] * 10 + [True] * 200 + [False] * 160
    baseline = [False] * 30 + [True] * 10 + [True] * 200 + [False] * 160
    first = paired_accuracy(candidate, baseline, resamples=4000, seed=3)
    assert first == paired_accuracy(candidate, baseline, resamples=4000, seed=3)
    assert first.difference.estimate == pytest.approx(0.05)
    assert (first.candidate_only, first.baseline_only, first.items) == (30, 10, 400)
    # Normal theory for a paired difference: sqrt((b + c)/n - d^2) / sqrt(n).
    half = 1.959964 * math.sqrt((40 / 400 - 0.05**2) / 400)
    assert first.difference.low == pytest.approx(0.05 - half, abs=0.0025)  # a 90% interval would be 0.005 off
    assert first.difference.high == pytest.approx(0.05 + half, abs=0.0025)
    assert first.p_value == pytest.approx(mcnemar_exact_p(30, 10))
    narrower = paired_accuracy(candidate, baseline, confidence=0.8, resamples=4000, seed=3)
    assert first.difference.low < narrower.difference.low < narrower.difference.high < first.difference.high
    half_80 = 1.281552 * math.sqrt((40 / 400 - 0.05**2) / 400)  # two-sided: the 10% and 90% quantiles
    assert narrower.difference.low == pytest.approx(0.05 - half_80, abs=0.0025)
    assert narrower.difference.high == pytest.approx(0.05 + half_80, abs=0.0025)


def test_the_bootstrap_honours_its_seed_and_its_resamples():
    candidate = [True] * 30 + [False] * 10 + [True] * 200 + [False] * 160
    baseline = [False] * 30 + [True] * 10 + [True] * 200 + [False] * 160
    seeded = paired_accuracy(candidate, baseline, resamples=4000, seed=3).difference
    assert paired_accuracy(candidate, baseline, resamples=4000, seed=4).difference != seeded
    assert paired_accuracy(candidate, baseline, resamples=20, seed=3).difference != seeded


def test_a_degraded_model_has_an_interval_far_below_zero():
    result = paired_accuracy([False] * 24, [True] * 24)
    assert (result.difference.low, result.difference.high) == (-1.0, -1.0)
    assert result.p_value == pytest.approx(2 / 2**24)


def test_latency_ratio_is_the_median_of_per_item_ratios():
    baseline = [0.1, 0.2, 0.3, 0.4, 0.5] * 10
    ratio = paired_latency_ratio([2 * b for b in baseline], baseline)
    assert (ratio.estimate, ratio.low, ratio.high) == pytest.approx((2.0, 2.0, 2.0))
    noisy = paired_latency_ratio([b * (1.5 if i % 2 else 1.0) for i, b in enumerate(baseline)], baseline)
    assert 1.0 <= noisy.low <= noisy.estimate <= noisy.high <= 1.5
    # One slow item in five: the median ratio ignores it (a mean would read 2.8).
    skewed = paired_latency_ratio([1.0, 1.0, 1.0, 1.0, 10.0] * 10, [1.0] * 50)
    assert (skewed.estimate, skewed.low, skewed.high) == (1.0, 1.0, 1.0)


def test_proportion_interval_is_wilsons():
    interval = proportion_interval([True] * 8 + [False] * 2)
    assert (interval.low, interval.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert proportion_interval([True] * 24).high == 1.0


def test_items_needed_for_a_margin():
    assert items_needed(0.05, 0.95, 0.15) == 231  # 1.96^2 * 0.15 / 0.05^2 = 230.5
    assert items_needed(0.2, 0.95, 0.15) == 15
    assert items_needed(0.05, 0.99, 0.15) > items_needed(0.05, 0.95, 0.15)


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same non-empty items"):
        paired_accuracy([True], [True, False])


def test_defaults_and_confidence_are_those_documented():
    candidate = [True] * 30 + [False] * 10 + [True] * 200 + [False] * 160
    baseline = [False] * 30 + [True] * 10 + [True] * 200 + [False] * 160
    default = paired_accuracy(candidate, baseline)
    assert default == paired_accuracy(candidate, baseline, confidence=0.95, resamples=2000, seed=0)
    assert default.difference.confidence == 0.95
    assert paired_accuracy(candidate, baseline, confidence=0.8).difference.confidence == 0.8
    latencies = [0.1 * (i % 7 + 1) for i in range(40)]
    slower = [value * (1 + (i % 3) / 4) for i, value in enumerate(latencies)]
    ratio = paired_latency_ratio(slower, latencies)
    assert ratio == paired_latency_ratio(slower, latencies, confidence=0.95, resamples=2000, seed=0)
    assert paired_latency_ratio(slower, latencies, confidence=0.8).confidence == 0.8
    wilson = proportion_interval([True] * 8 + [False] * 2, confidence=0.8)
    assert (wilson.estimate, wilson.confidence) == (0.8, 0.8)


def test_empty_or_unpaired_latencies_and_no_items_are_refused():
    with pytest.raises(ValueError, match=r"paired latencies need the same non-empty items: 1 and 2"):
        paired_latency_ratio([0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="accuracy of no items"):
        proportion_interval([])
