"""Runs a study's grid in parallel worker processes, resuming what an interruption left.

Each run trains in its own process with one torch thread (``workers`` processes then use
``workers`` cores without oversubscription). A run whose folder already holds a final
``metrics.json`` is not redone; one that holds checkpoints but no final metrics resumes
from its newest checkpoint. A run that raises is recorded as ``failed`` with its error,
and one that diverges as ``diverged``: neither stops the study. Started by ``torchrun``,
the runs go one after the other, each trained with DDP over all the ranks.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from normlab.gan.distributed import launched_by_torchrun
from normlab.study.grid import RunSpec

#: Statuses a run folder's metrics.json can end with (a failed run writes none).
FINAL_STATUSES = ("finished", "diverged")


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The stored outcome of a run that ended (finished or diverged), else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("status") not in FINAL_STATUSES:
        return None
    return {
        "status": stored["status"],
        "metrics": stored.get("final", {}),
        "steps": stored.get("step"),
        "divergence": stored.get("divergence"),
        "wall_time": stored.get("wall_time"),
    }


def _has_checkpoint(run_dir: Path) -> bool:
    return (
        any((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else False
    )


def _train_one(spec: RunSpec) -> dict[str, Any]:
    """Worker body: one run, one thread; returns its outcome (never raises)."""
    import torch

    torch.set_num_threads(1)
    from normlab.gan.trainer import train

    start = time.perf_counter()
    try:
        resume = _has_checkpoint(spec.run_dir)
        out = train(spec.config, spec.run_dir, resume=resume, progress=False)
        return {
            "status": out["status"],
            "metrics": out.get("metrics", {}),
            "steps": out.get("steps"),
            "divergence": out.get("divergence"),
            "wall_time": out.get("wall_time", time.perf_counter() - start),
            "resumed": resume,
        }
    except Exception as err:  # a broken run must not end the study
        return {
            "status": "failed",
            "metrics": {},
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=5),
            "wall_time": time.perf_counter() - start,
        }


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_grid(
    runs: list[RunSpec],
    workers: int | None = None,
) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    """Yield ``(spec, outcome)`` for every run, finished ones first, the rest as they end.

    ``workers`` processes (default: the core count) run at once; ``workers=1`` runs in
    this process (no pool), which is what tests and debuggers want.
    """
    pending = []
    for spec in runs:
        done = finished_result(spec.run_dir)
        if done is not None:
            yield spec, {**done, "reused": True}
        else:
            pending.append(spec)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if launched_by_torchrun():
        # Under torchrun every rank walks the grid in the same order and each run trains
        # with DDP across the ranks (worker processes would inherit the rank variables).
        workers = 1
    if workers == 1 or len(pending) <= 1:
        for spec in pending:
            yield spec, _train_one(spec)
        return
    context = mp.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
        futures: dict[Future, RunSpec] = {pool.submit(_train_one, s): s for s in pending}
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                spec = futures.pop(fut)
                yield spec, fut.result()
