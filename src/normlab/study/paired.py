"""Paired comparisons of two methods run on the same seeds.

Runs of two methods that share a seed share their data stream and latents, so the
per-seed differences ``d_i = a_i - b_i`` remove the seed-to-seed variation both methods
share. For ``n`` seeds on which both runs finished:

* the **paired t interval** of the mean difference,
  ``dbar +- t_{0.975, n-1} * s_d / sqrt(n)`` (``s_d`` the sample std of the ``d_i``), and
  the two-sided **paired t-test** p-value of ``dbar = 0`` (the t statistic of the differences);
* a **paired bootstrap** percentile interval: the 2.5% and 97.5% quantiles of the mean of
  ``n`` differences resampled with replacement (``BOOTSTRAP_RESAMPLES``, fixed seed). With
  few seeds it is narrower than the t interval (it cannot see the t tails; with 3 seeds it
  has only 10 distinct resamples), so the verdict uses the t interval;
* **separated**: the t interval excludes 0;
* **seeds needed** (when not separated): the smallest ``n'`` with
  ``t_{0.975, n'-1} * s_d / sqrt(n') < |dbar|``, a plug-in estimate that takes the observed
  ``dbar`` and ``s_d`` as the truth (a rough planning figure, not a power analysis); None
  when ``dbar = 0`` (no number of seeds separates them at this estimate).

Example::

    >>> d = paired_difference([0.9, 0.8, 0.95], [0.5, 0.6, 0.55])
    >>> round(d.mean, 3), d.separated
    (0.333, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

#: Two-sided coverage of the intervals.
CONFIDENCE = 0.95
#: Resamples of the paired bootstrap.
BOOTSTRAP_RESAMPLES = 10_000
#: The largest number of seeds ``seeds_needed`` reports (beyond it: None).
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class PairedDifference:
    """The mean of ``a - b`` over ``n`` shared seeds, its intervals, test and verdict."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    boot_low: float
    boot_high: float
    p_value: float
    separated: bool
    seeds_needed: int | None


def _t_half(std: float, n: int) -> float:
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)


def seeds_needed(mean: float, std: float) -> int | None:
    """The smallest ``n >= 2`` whose paired t interval, at this mean and std of the
    differences, excludes 0; None when none does (``mean == 0``) or it exceeds ``MAX_SEEDS``.

    Example::

        >>> seeds_needed(1.0, 1.0)   # t_{0.975, n-1} / sqrt(n) < 1 first at n = 7
        7
    """
    if not (math.isfinite(mean) and math.isfinite(std)) or mean == 0:
        return None
    if std == 0:
        return 2
    # The normal bound gives a start; the t quantile only makes the answer larger. (A start
    # past MAX_SEEDS is already the answer, and may not fit scipy's integer types.)
    start = (1.96 * std / abs(mean)) ** 2
    if start > MAX_SEEDS:
        return None
    n = max(2, int(start))
    while _t_half(std, n) >= abs(mean):
        n = n + 1 if n < 1000 else int(n * 1.01) + 1
        if n > MAX_SEEDS:
            return None
    while n > 2 and _t_half(std, n - 1) < abs(mean):  # the start can overshoot by a few
        n -= 1
    return n


def paired_difference(a: list[float], b: list[float], *, seed: int = 0) -> PairedDifference | None:
    """The paired comparison of ``a[i]`` against ``b[i]`` (pairs with a non-finite or missing
    value are dropped); None with fewer than 2 pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    n = len(pairs)
    if n < 2:
        return None
    d = np.array([x - y for x, y in pairs])
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = _t_half(std, n)
    low, high = mean - half, mean + half
    if std == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        t_stat = mean / (std / math.sqrt(n))
        p = float(2 * stats.t.sf(abs(t_stat), n - 1))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    q = (1 - CONFIDENCE) / 2
    boot_low, boot_high = (float(v) for v in np.quantile(means, [q, 1 - q]))
    separated = bool(low > 0 or high < 0)
    return PairedDifference(
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        boot_low=boot_low,
        boot_high=boot_high,
        p_value=p,
        separated=separated,
        seeds_needed=None if separated else seeds_needed(mean, std),
    )


def compare_groups(
    records: list[dict[str, Any]], metric: str
) -> list[tuple[str, str, PairedDifference]]:
    """Every pair of groups (in their order of appearance), compared on ``metric`` over the
    seeds on which both finished: ``[(a, b, difference of a - b), ...]`` (pairs with fewer
    than 2 shared seeds are left out)."""
    by_group: dict[str, dict[int, float]] = {}
    for rec in records:
        values = by_group.setdefault(rec["group"], {})
        v = rec.get("metrics", {}).get(metric)
        if rec["status"] == "finished" and v is not None:
            values[rec["seed"]] = v
    out = []
    for a, b in combinations(by_group, 2):
        shared = sorted(set(by_group[a]) & set(by_group[b]))
        diff = paired_difference([by_group[a][s] for s in shared], [by_group[b][s] for s in shared])
        if diff is not None:
            out.append((a, b, diff))
    return out


def paired_section(records: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """Markdown lines: for each metric, every pair of groups' paired difference."""
    blocks = []
    for metric in metrics:
        rows = compare_groups(records, metric)
        if not rows:
            continue
        blocks += [
            f"### {metric}",
            "",
            "| a - b | seeds | mean difference [95% paired t] | paired bootstrap 95% | p | "
            "verdict |",
            "|---|---|---|---|---|---|",
        ]
        for a, b, d in rows:
            if d.separated:
                verdict = f"separated ({a if d.mean > 0 else b} higher)"
            elif d.seeds_needed is None:
                verdict = "not separated (no difference at this estimate)"
            else:
                verdict = f"not separated: ~{d.seeds_needed} seeds needed"
            blocks.append(
                f"| {a} - {b} | {d.n} | {d.mean:.3g} [{d.low:.3g}, {d.high:.3g}] | "
                f"[{d.boot_low:.3g}, {d.boot_high:.3g}] | {d.p_value:.2g} | {verdict} |"
            )
        blocks.append("")
    if not blocks:
        return []
    return [
        "## Paired differences",
        "",
        "Each pair of groups compared seed by seed (runs with the same seed share data and "
        "latents): mean of a - b over the seeds where both finished, its 95% paired t "
        "interval, the paired bootstrap interval (narrower than the t interval with few "
        "seeds; shown for reference), the paired t-test p-value. *Separated*: the t interval "
        "excludes 0. *Seeds needed*: the smallest number of seeds whose t interval would "
        "exclude 0 if the observed mean and spread of the differences held (a plug-in "
        "planning figure).",
        "",
        *blocks,
    ]
