"""Paired comparisons over seeds, against t-table values and hand computations."""

import math

import pytest

from normlab.study.paired import compare_groups, paired_difference, paired_section, seeds_needed
from normlab.study.stats import summarize


def test_paired_t_interval_and_test_by_hand():
    a, b = [3.0, 5.0, 4.0], [1.0, 2.0, 2.5]
    d = paired_difference(a, b)
    diffs = [2.0, 3.0, 1.5]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    assert d.n == 3 and d.mean == pytest.approx(mean) and d.std == pytest.approx(sd)
    # t_{0.975, 2} = 4.3027 (t-table)
    assert d.high - d.mean == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)
    from scipy.stats import ttest_rel

    assert d.p_value == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    assert d.separated == (d.low > 0) and d.separated == (d.p_value < 0.05)


def test_pairing_separates_what_per_method_intervals_cannot():
    # Seeds vary a lot, but a beats b by about 0.1 on every seed.
    base = [0.2, 0.9, 0.5, 0.7, 0.1]
    a = [x + 0.1 + e for x, e in zip(base, [0.01, -0.01, 0.0, 0.02, -0.02])]
    sa, sb = summarize(a), summarize(base)
    assert sa.low < sb.high  # the per-method intervals overlap
    d = paired_difference(a, base)
    assert d.separated and d.low > 0 and d.seeds_needed is None
    assert d.boot_low > 0 and d.boot_low <= d.mean <= d.boot_high


def test_seeds_needed_against_the_t_table():
    # t_{0.975,5}/sqrt(6) = 2.5706/2.4495 = 1.049 >= 1; t_{0.975,6}/sqrt(7) = 2.4469/2.6458 = 0.925
    assert seeds_needed(1.0, 1.0) == 7
    assert seeds_needed(-0.5, 0.5) == 7  # only |mean| / std matters
    # std / |mean| = 10: n ~ (1.96 * 10)^2 = 384 and a little more for the t quantile
    n = seeds_needed(0.1, 1.0)
    assert 384 <= n <= 400
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1.0, 0.0) == 2
    # past MAX_SEEDS: None, also where the start would overflow scipy's integers (a crash of
    # the balanced stacked-digits report, where a pair of groups differed by ~1e-13 on average)
    assert seeds_needed(1e-3, 1.0) is None
    assert seeds_needed(1e-12, 1.0) is None
    d = paired_difference([1.0, 0.0, 5.0 + 1e-12], [0.0, 1.0, 5.0])  # mean ~3e-13, std ~1
    assert not d.separated and d.seeds_needed is None


def test_not_separated_reports_seeds_needed():
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 2.5, 2.0])  # diffs 0.5, -0.5, 1.0
    assert not d.separated and d.low < 0 < d.high
    assert d.seeds_needed == seeds_needed(d.mean, d.std) and d.seeds_needed > 3


def test_bootstrap_resamples_the_differences():
    d = paired_difference([1.0, 2.0], [1.0, 1.0])  # diffs 0 and 1: resampled means 0, .5, 1
    assert d.boot_low == 0.0 and d.boot_high == 1.0
    same = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # every diff 1
    assert same.boot_low == same.boot_high == 1.0 and same.separated and same.p_value == 0.0


def test_missing_values_and_errors():
    assert paired_difference([1.0, None], [2.0, 3.0]) is None  # one pair left
    with pytest.raises(ValueError, match="equal lengths, got 2 and 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


def _rec(group, seed, v, status="finished"):
    return {"group": group, "seed": seed, "status": status, "metrics": {"m": v}}


def test_groups_are_paired_by_seed():
    recs = [
        _rec("a", 0, 1.0),
        _rec("a", 1, 2.0),
        _rec("a", 2, 9.0, status="diverged"),
        _rec("b", 2, 0.0),
        _rec("b", 1, 1.5),
        _rec("b", 0, 0.7),
    ]
    [(ga, gb, d)] = compare_groups(recs, "m")
    assert (ga, gb, d.n) == ("a", "b", 2)  # seed 2 dropped: a's run diverged
    assert d.mean == pytest.approx(((1.0 - 0.7) + (2.0 - 1.5)) / 2)
    text = "\n".join(paired_section(recs, ["m"]))
    assert "## Paired differences" in text and "| a - b | 2 |" in text
