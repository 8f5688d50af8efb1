"""Summary statistics of a metric over seeds: mean, std and a 95% bootstrap interval.

The interval is the **bootstrap percentile interval of the mean**: the 2.5% and 97.5%
quantiles of the mean of ``n`` values drawn with replacement from the ``n`` observed ones.
It lies inside ``[min, max]`` of the observed values, so it never leaves the metric's range
(a count of modes in ``[0, 8]``, a fraction in ``[0, 1]``), which a t-interval does with
3 seeds (``[-1.2, 4.54]`` modes). For ``n <= EXACT_MAX_N`` the bootstrap distribution is
enumerated exactly (every multiset of draws with its multinomial weight), so the interval
has no resampling noise; above, ``RESAMPLES`` seeded resamples. With few runs it is
narrow (it cannot reach beyond the values seen; with 3 runs its coverage is well below
95%): read it with the number of runs printed beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np

#: Two-sided coverage of the reported interval.
CONFIDENCE = 0.95
#: Up to this many values the bootstrap distribution is enumerated exactly (6,435 multisets).
EXACT_MAX_N = 8
#: Resamples drawn above ``EXACT_MAX_N`` values.
RESAMPLES = 20_000


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and 95% bootstrap percentile interval of ``n`` finite values."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def summarize(values: list[float]) -> Summary | None:
    """The summary of the finite ``values`` (None when there are none).

    Example::

        >>> s = summarize([1.0, 2.0, 3.0])
        >>> round(s.mean, 3), round(s.std, 3), (round(s.low, 3), round(s.high, 3))
        (2.0, 1.0, (1.0, 3.0))
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, float("nan"), float("nan"), float("nan"))
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    low, high = bootstrap_interval(xs)
    return Summary(n, mean, std, low, high)


# -- per-method intervals: the bootstrap ------------------------------------------------------
def bootstrap_means(xs: list[float], *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(means, probabilities)``: the bootstrap distribution of the mean of ``xs``.

    Exact for ``len(xs) <= EXACT_MAX_N``: each multiset ``c`` of ``n`` draws has probability
    ``n! / (prod c_i!) / n^n``. Above, ``RESAMPLES`` seeded resamples of equal weight.
    """
    x = np.asarray(xs, dtype=np.float64)
    n = len(x)
    if n <= EXACT_MAX_N:
        means, probs = [], []
        log_norm = math.lgamma(n + 1) - n * math.log(n)
        for combo in combinations_with_replacement(range(n), n):
            counts = np.bincount(combo, minlength=n)
            log_w = log_norm - sum(math.lgamma(c + 1) for c in counts)
            means.append(float(counts @ x) / n)
            probs.append(math.exp(log_w))
        return np.array(means), np.array(probs)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(RESAMPLES, n))].mean(axis=1)
    return means, np.full(RESAMPLES, 1.0 / RESAMPLES)


def bootstrap_interval(
    xs: list[float], confidence: float = CONFIDENCE, *, seed: int = 0
) -> tuple[float, float]:
    """The bootstrap percentile interval of the mean: the ``(1 -+ confidence) / 2`` quantiles
    (smallest mean whose cumulative probability reaches the level) of ``bootstrap_means``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if len(xs) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {len(xs)}")
    means, probs = bootstrap_means(xs, seed=seed)
    order = np.argsort(means, kind="stable")
    means, cdf = means[order], np.cumsum(probs[order])
    cdf /= cdf[-1]
    tail = (1 - confidence) / 2

    def quantile(q: float) -> float:
        return float(means[min(int(np.searchsorted(cdf, q - 1e-12)), len(means) - 1)])

    return quantile(tail), quantile(1 - tail)
