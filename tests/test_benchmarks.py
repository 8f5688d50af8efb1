"""The benchmark scripts run end to end (tiny sizes), and their statistics are right."""

import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binom

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


from bench_step import (  # noqa: E402
    combine_runs,
    median_ci,
    median_ci_coverage,
)


@pytest.mark.parametrize("n", [5, 12, 30, 40, 101])
def test_median_interval_is_the_narrowest_with_95_percent_coverage(n):
    """``[x_(j), x_(n-1-j)]`` (0-based) covers the median with probability
    ``1 - 2 P(B <= j)``, B ~ Binomial(n, 1/2): j must be the largest index keeping that >= 95%
    (or 0, the full range, when no index does)."""
    lo, hi = median_ci([float(i) for i in reversed(range(n))])
    j = int(lo)
    assert hi == n - 1 - j
    covering = [i for i in range(n // 2) if 1 - 2 * binom.cdf(i, n, 0.5) >= 0.95]
    assert j == (max(covering) if covering else 0)


@pytest.mark.parametrize("n", [2, 5, 6, 12, 40])
def test_median_interval_coverage_is_the_binomial_probability(n):
    """The coverage ``median_ci`` reports is ``1 - 2 P(B <= j)`` for the ``j`` it uses."""
    j = int(median_ci([float(i) for i in range(n)])[0])
    assert median_ci_coverage(n) == pytest.approx(1 - 2 * binom.cdf(j, n, 0.5), abs=1e-12)
    assert (median_ci_coverage(n) >= 0.95) == (n >= 6)


def test_runs_combine_into_medians_with_the_interval_across_runs():
    """Six runs: every figure is the median of the six, and the ratio's interval is the
    runs' range (the narrowest order-statistic interval with 95% coverage for six values)."""
    ratios = [1.10, 1.04, 1.07, 1.12, 1.05, 1.09]
    runs = [
        ({"sn": 0.1 * (k + 1)}, {"sn": 0.1}, {"sn": r}, {"sn": (r - 0.01, r + 0.01)}, {"sn": [k]})
        for k, r in enumerate(ratios)
    ]
    med, base, ratio, interval, extra = combine_runs(runs)
    assert med["sn"] == pytest.approx(0.35)
    assert base["sn"] == pytest.approx(0.1)
    assert ratio["sn"] == pytest.approx((1.07 + 1.09) / 2)
    assert interval["sn"] == (1.04, 1.12)
    assert extra["sn"] == [2.5]
    assert combine_runs(runs[:1]) is runs[0]


@pytest.mark.parametrize(
    "args",
    [
        [
            "bench_step.py",
            *("--batch", "2", "--steps", "2", "--warmup", "0", "--methods", "bsn", "--ops"),
        ],
        [
            "bench_step.py",
            *("--batch", "2", "--steps", "1", "--warmup", "0", "--full", "--memory", "--parts"),
        ],
        ["bench_layers.py", "--method", "wn", "--batch", "2", "--rounds", "1"],
        [
            "bench_step.py",
            *("--arch", "mlp", "--batch", "8", "--steps", "1", "--warmup", "0", "--full"),
            *("--methods", "bssn,torch_sn"),
        ],
        [
            "bench_step.py",
            *("--batch", "2", "--steps", "1", "--warmup", "0", "--methods", "sn", "--repeats", "2"),
        ],
        ["bench_optimizer.py", "--steps", "2", "--warmup", "1", "--method", "bssn"],
    ],
    ids=["step", "full_memory", "layers", "mlp_full", "step_repeats", "optimizer"],
)
def test_benchmark_scripts_run(args):
    args = [*args]
    if args[0] == "bench_step.py" and "--full" in args and "--methods" not in args:
        args += ["--methods", "sn"]
    out = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert any(k in out.stdout for k in ("total", "x twin", "<=1.02", "fused / foreach"))
