"""A comparison study: methods x seeds (x scales), run in parallel, summarised in a report.

Example::

    >>> from normlab.gan.config import TrainConfig
    >>> records = run_study(TrainConfig(data="ring8", steps=500), ["sn", "bssn"], seeds=[0, 1],
    ...                     out_dir="runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normlab.gan.config import TrainConfig
from normlab.study.convergence import check_run
from normlab.study.grid import RunSpec, build_grid
from normlab.study.report import write_report, write_results
from normlab.study.runner import run_grid


def _record(spec: RunSpec, outcome: dict[str, Any]) -> dict[str, Any]:
    cfg = spec.config.to_dict()
    convergence = check_run(spec.run_dir)
    return {
        "group": spec.group,
        "method": spec.method,
        "seed": spec.seed,
        "scale": spec.scale,
        "status": outcome["status"],
        "metrics": outcome.get("metrics", {}),
        "wall_time": outcome.get("wall_time"),
        "steps": outcome.get("steps"),
        "divergence": outcome.get("divergence"),
        "error": outcome.get("error"),
        "reused": outcome.get("reused", False),
        "converged": convergence["converged"],
        "convergence": convergence,
        "run_dir": str(spec.run_dir),
        "hyperparameters": {k: cfg[k] for k in ("lr_d", "lr_g", "beta1", "beta2", "n_dis", "loss")},
        "config": cfg,
    }


def report_notes(base: TrainConfig) -> list[str]:
    """Caveats the report must state for this data."""
    notes = []
    if base.is_mixture:
        notes.append(
            "Mixture metrics (PacGAN): a sample is high quality within 3 std of its nearest "
            "mode; a mode is covered by at least one high-quality sample; reverse KL is "
            "KL(q || uniform) of the high-quality samples' mode histogram."
        )
    elif not base.inception_weights:
        notes.append(
            "Image metrics are computed on the features of a small classifier trained on this "
            "dataset itself (cached as feature_net.pt), not on Inception-v3: they compare "
            "methods within this report, and are not comparable to published FIDs. Pass "
            "--inception-weights FILE for the standard FID network."
        )
    return notes


def run_study(
    base: TrainConfig,
    methods: list[str],
    seeds: list[int],
    out_dir: str | Path,
    *,
    scales: list[float] | None = None,
    workers: int | None = None,
    command: str = "normlab compare",
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the grid, write ``results.json`` after every run and the report at the end.

    Returns the records in grid order. ``on_result`` is called with each record as its
    run ends (for progress display).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = build_grid(base, methods, seeds, scales, out)
    order = {spec.run_dir: i for i, spec in enumerate(runs)}
    done: dict[Path, dict[str, Any]] = {}
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    for spec, outcome in run_grid(runs, workers):
        rec = _record(spec, outcome)
        done[spec.run_dir] = rec
        if main_rank:
            write_results(sorted(done.values(), key=lambda r: order[Path(r["run_dir"])]), out)
        if on_result is not None:
            on_result(rec)
    records = [done[spec.run_dir] for spec in runs]
    if main_rank:
        write_results(records, out)
        write_report(records, out, command=command, notes=report_notes(base))
    return records
