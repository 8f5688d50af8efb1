"""How ``normlab compare``'s wall time grows with the number of runs and of steps.

Runs ``normlab compare`` (a subprocess each, as a user would: imports, process pool, report
and figures included) on ring8 with ``--workers W`` for 1, 2, 4, 8 runs (seeds of one
method) and two step counts, and prints for each: the wall time of the command, the mean
wall time of one run as ``results.json`` records it (training + evaluation inside the
worker), and the fixed part (command wall minus the runs' share of the workers).

    python benchmarks/bench_compare_scaling.py                  # 1,2,4,8 runs x 100,200 steps
    python benchmarks/bench_compare_scaling.py --runs 1,2 --steps 50 --workers 2

Linear growth in runs x steps means: at a fixed step count, wall ~= fixed + ceil(runs / W) *
per_run; and per_run ~= a + b * steps. The last lines fit both (over the runs >= 2 rows: a
single run trains in-process, without the pool's start-up) and print the residuals.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(
    runs: int, steps: int, workers: int, method: str, root: Path, rep: int, device: str = "cpu"
) -> dict:
    out = root / f"r{runs}-s{steps}-{rep}"
    cmd = [
        sys.executable,
        "-m",
        "normlab",
        "compare",
        "--data",
        "ring8",
        "--methods",
        method,
        "--seeds",
        str(runs),
        "--steps",
        str(steps),
        "--workers",
        str(workers),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "eval_every=0",
        "--set",
        "ckpt_every=0",
        "--set",
        "log_every=10",
        "--set",
        f"device={device}",
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    recs = json.loads((out / "results.json").read_text())
    recs = recs["runs"] if isinstance(recs, dict) and "runs" in recs else recs
    per_run = [float(r["wall_time"]) for r in recs if r.get("wall_time")]
    mean_run = sum(per_run) / len(per_run) if per_run else float("nan")
    waves = math.ceil(runs / workers)
    return {
        "runs": runs,
        "steps": steps,
        "wall": wall,
        "per_run": mean_run,
        "waves": waves,
        "fixed": wall - waves * mean_run,
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="1,2,4,8")
    p.add_argument("--steps", default="100,200")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", default="sn")
    p.add_argument("--device", default="cpu", help="the runs' device: cpu or cuda (default cpu)")
    p.add_argument(
        "--repeat", type=int, default=3, help="interleaved repetitions; the median is reported"
    )
    args = p.parse_args()
    runs = [int(x) for x in args.runs.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    trials: dict[tuple[int, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):  # interleaved: a busy moment hits every setting alike
            for s in steps:
                for r in runs:
                    row = one(r, s, args.workers, args.method, Path(tmp), rep, args.device)
                    trials.setdefault((r, s), []).append(row)
                    print(
                        f"  (trial {rep}: runs={r} steps={s} wall {row['wall']:.1f} s)", flush=True
                    )
    rows = []
    for (r, s), rs in trials.items():
        row = {k: statistics.median(x[k] for x in rs) for k in ("wall", "per_run", "fixed")} | {
            "runs": r,
            "steps": s,
            "waves": rs[0]["waves"],
        }
        rows.append(row)
        print(
            f"runs={r:2d} steps={s:5d} workers={args.workers}: wall {row['wall']:6.1f} s"
            f"  per run {row['per_run']:5.2f} s  waves {row['waves']}"
            f"  fixed {row['fixed']:5.1f} s  runs*steps/wall "
            f"{r * s / row['wall']:7.1f}  (median of {len(rs)})",
            flush=True,
        )
    # One run is trained in-process (no pool); from two runs on, a process pool of
    # min(workers, runs) workers starts first: the fit covers the pool's rows.
    for s in steps:
        sel = [row for row in rows if row["steps"] == s and row["runs"] >= 2]
        if len(sel) >= 2:
            a, b = _fit([row["waves"] for row in sel], [row["wall"] for row in sel])
            res = max(abs(row["wall"] - (a + b * row["waves"])) for row in sel)
            print(
                f"steps={s}: wall = {a:.1f} s + {b:.2f} s x ceil(runs/{args.workers}) "
                f"(max residual {res:.1f} s)"
            )
    pool = [row for row in rows if row["runs"] >= 2]
    if len(steps) >= 2 and pool:
        a, b = _fit([row["steps"] for row in pool], [row["per_run"] for row in pool])
        res = max(abs(row["per_run"] - (a + b * row["steps"])) for row in pool)
        print(f"one run = {a:.2f} s + {1e3 * b:.2f} ms x steps (max residual {res:.2f} s)")


if __name__ == "__main__":
    main()
