"""The per-method summary: mean, std, and a bootstrap percentile interval checked against a
brute-force enumeration of every resample."""

import itertools
import math

import numpy as np
import pytest

from normlab.study.stats import bootstrap_interval, summarize


def _brute_force_interval(xs, confidence=0.95):
    """Every ordered resample (n^n of them, equally likely): quantiles of their means."""
    means = np.sort([np.mean(c) for c in itertools.product(xs, repeat=len(xs))])
    k = len(means)
    tail = (1 - confidence) / 2
    # smallest mean whose empirical CDF reaches the level
    lo = means[math.ceil(tail * k - 1e-9) - 1]
    hi = means[math.ceil((1 - tail) * k - 1e-9) - 1]
    return lo, hi


@pytest.mark.parametrize(
    "xs", [[1.0, 2.0, 3.0], [0.0, 0.0, 8.0], [0.2, 0.9, 0.35, 0.5], [3, 1, 4, 1, 5, 9]]
)
def test_exact_bootstrap_matches_brute_force(xs):
    assert bootstrap_interval(xs) == pytest.approx(_brute_force_interval(xs), abs=1e-12)


def test_intervals_stay_inside_the_metric_range():
    # 3 seeds; the t-interval of these is [-7.83, 13.83] and [-0.18, 1.72] (the issue saw
    # modes_covered [-1.2, 4.54] and high_quality_frac [0.317, 1.25]).
    modes = summarize([0, 1, 8])
    frac = summarize([0.33, 0.98, 1.0])
    assert 0 <= modes.low <= modes.mean <= modes.high <= 8
    assert 0 <= frac.low <= frac.mean <= frac.high <= 1
    assert modes.n == 3 and modes.std == pytest.approx(math.sqrt(19))


def test_many_runs_resample_and_agree_with_the_normal_theory():
    rng = np.random.default_rng(1)
    xs = list(rng.normal(0.0, 1.0, size=40))
    lo, hi = bootstrap_interval(xs)
    s = np.std(xs, ddof=1) / math.sqrt(40)
    # the bootstrap of a mean of 40 normal values is close to mean +- 1.96 s/sqrt(n)
    assert lo == pytest.approx(np.mean(xs) - 1.96 * s, abs=0.25 * s)
    assert hi == pytest.approx(np.mean(xs) + 1.96 * s, abs=0.25 * s)
    assert bootstrap_interval(xs) == (lo, hi)  # seeded


def test_non_finite_and_missing_values_are_dropped():
    s = summarize([1.0, float("nan"), None, 3.0, float("inf")])
    assert s.n == 2
    assert s.mean == 2.0
    assert (s.low, s.high) == (1.0, 3.0)  # resamples: {1,1}, {1,3} x2, {3,3}
    assert summarize([]) is None
    one = summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.std)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0, 2.0], 1.5)
