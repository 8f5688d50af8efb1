"""The benchmark scripts run end to end (tiny sizes), and their statistics are right."""

import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binom

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_step import median_ci  # noqa: E402


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
        ["bench_layers.py", "--method", "wn", "--batch", "2", "--rounds", "1", "--modes", "auto"],
    ],
    ids=["step", "full_memory", "layers"],
)
def test_benchmark_scripts_run(args):
    args = [*args]
    if args[0] == "bench_step.py" and "--full" in args:
        args += ["--methods", "sn"]
    out = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "total" in out.stdout or "x twin" in out.stdout
