"""The summary statistics against values from a t-table."""

import math

import pytest

from normlab.study.stats import summarize


def test_t_interval_matches_the_table():
    s = summarize([1.0, 2.0, 3.0])
    assert s.n == 3
    assert s.mean == pytest.approx(2.0)
    assert s.std == pytest.approx(1.0)
    # t_{0.975, 2} = 4.3027 (any t-table): half-width 4.3027 / sqrt(3)
    assert s.high - s.mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert s.mean - s.low == pytest.approx(s.high - s.mean)


def test_ten_seeds():
    values = [float(v) for v in range(10)]
    s = summarize(values)
    # sample std of 0..9 is sqrt(82.5/9); t_{0.975, 9} = 2.2622
    assert s.std == pytest.approx(math.sqrt(82.5 / 9))
    assert s.high - s.mean == pytest.approx(2.2622 * s.std / math.sqrt(10), rel=1e-4)


def test_non_finite_and_missing_values_are_dropped():
    s = summarize([1.0, float("nan"), None, 3.0, float("inf")])
    assert s.n == 2
    assert s.mean == 2.0
    assert summarize([]) is None
    one = summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.std)
