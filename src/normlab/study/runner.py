"""Runs a study's grid in parallel worker processes, resuming what an interruption left.

Each run trains in its own process with one torch thread (``workers`` processes then use
``workers`` cores without oversubscription). A run whose folder already holds a final
``metrics.json`` is not redone; one that holds checkpoints but no final metrics resumes
from its newest checkpoint; one that holds no checkpoint (it failed or was stopped as it
started) starts over. A run that raises is recorded as ``failed`` with its error,
and one that diverges as ``diverged``: neither stops the study. Started by ``torchrun``,
the runs go one after the other, each trained with DDP over all the ranks.

Stopping. When ``stop`` (a ``threading.Event``) is set, typically by the command line's
SIGINT/SIGTERM handler, every worker is sent SIGTERM: it finishes the step under way,
writes a checkpoint at that step and ends (status ``interrupted``); a worker still alive
``grace`` seconds later is killed (its newest checkpoint, written atomically, stays
good). Nothing new starts, and ``run_grid`` raises ``StudyInterrupted`` once every worker
has ended. A worker whose parent dies without a word (SIGKILL, the OOM killer) notices
it within about a second (Linux: ``PR_SET_PDEATHSIG``; everywhere: a watchdog thread
polling ``os.getppid()``), stops the same way and exits at most ``ORPHAN_GRACE`` seconds
later.

Start. Workers are forked from a ``multiprocessing`` fork server that imported torch and
the trainer once (``PRELOAD``), never ran a torch op and so holds no thread pool to break
by forking: a run starts in milliseconds, not the 4 s that importing torch and
``torch._dynamo`` (which building any ``torch.optim`` optimizer imports) takes in a fresh
interpreter, 9 runs x 4 s of the default study's 2 cores (``START_METHOD``).

Order. The pool starts the runs expected to take longest first (``longest_first``): with
fewer workers than runs, the last runs to start are then the short ones, and the study's
end is not one long run training alone while the other cores idle (the default ring8 study,
9 runs on 2 cores of the 4,000-step preset: 5 min 19 s in grid order, 4 min 34 s longest
first, same results).
Outcomes are reported as runs end; the study keeps its records in grid order.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any

from normlab.gan.distributed import launched_by_torchrun
from normlab.study.grid import RunSpec

#: Statuses a run folder's metrics.json can end with (a failed run writes none).
FINAL_STATUSES = ("finished", "diverged")
#: Seconds a stopped worker gets to finish its step and checkpoint before it is killed.
GRACE_S = 10.0
#: Seconds an orphaned worker gets to checkpoint before it exits regardless.
ORPHAN_GRACE = 5.0
#: How often (seconds) a worker's watchdog checks that its parent lives.
WATCHDOG_PERIOD = 0.5
#: How worker processes start: forked from a fork server (Unix), else spawned.
START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
#: What the fork server imports once, before it forks any worker.
PRELOAD = ["torch", "torch._dynamo", "normlab.study.runner", "normlab.gan.trainer"]
#: A training step's cost relative to no normalization, by method, for the order in which the
#: pool starts runs (only the order matters). Measured on the default ring8 study's MLPs, where
#: a method's cost per layer call shows most (runs of 4,000 steps, 2 at a time: none 41-50 s,
#: sn 60-66 s, bssn 71-72 s); the others placed by their extra power steps / reductions.
METHOD_COST = {
    "none": 1.0,
    "eqlr": 1.1,
    "wn": 1.2,
    "sn": 1.35,
    "ssn": 1.35,
    "bsn": 1.55,
    "bssn": 1.55,
    "sn_exact": 1.8,
}


def expected_cost(spec: RunSpec) -> float:
    """A run's relative cost: its steps x batch x n_dis + 1 updates x its method's step cost."""
    cfg = spec.config.resolved()  # the batch size a data kind defaults to
    return cfg.steps * cfg.batch_size * (cfg.n_dis + 1) * METHOD_COST[spec.method]


def longest_first(runs: list[RunSpec]) -> list[RunSpec]:
    """``runs`` by decreasing ``expected_cost`` (grid order among equals): longest processing
    time first, the classic rule for few machines and many jobs."""
    return sorted(runs, key=expected_cost, reverse=True)


class StudyInterrupted(Exception):
    """The study was stopped (``stop`` set) before every run ended.

    ``unfinished`` lists the ``RunSpec`` s that did not end (each keeps its newest
    checkpoint; running the study again resumes them).
    """

    def __init__(self, unfinished: list[RunSpec], total: int) -> None:
        self.unfinished = unfinished
        self.total = total
        super().__init__(
            f"study interrupted: {total - len(unfinished)} of {total} runs ended, "
            f"{len(unfinished)} unfinished (each keeps its newest checkpoint)"
        )


def finished_result(run_dir: Path, steps: int | None = None) -> dict[str, Any] | None:
    """The stored outcome of a run that ended (finished or diverged), else None.

    A run that finished before ``steps`` (a study asking for more) has not ended: None.
    """
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("status") not in FINAL_STATUSES:
        return None
    if stored["status"] == "finished" and steps is not None and (stored.get("step") or 0) < steps:
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


def _train_one(spec: RunSpec, stop=None) -> dict[str, Any]:
    """One run, one thread; returns its outcome (never raises an ``Exception``)."""
    import torch

    torch.set_num_threads(1)
    from normlab.gan.trainer import train

    start = time.perf_counter()
    if stop is not None and stop():  # stopped while this process started
        return _interrupted(spec, "stopped before it started")
    try:
        resume = _has_checkpoint(spec.run_dir)
        if not resume and spec.run_dir.is_dir():
            # Started before (its config written) but no checkpoint: a run that failed or was
            # stopped at its start. Nothing to resume, so it starts over.
            shutil.rmtree(spec.run_dir)
        out = train(spec.config, spec.run_dir, resume=resume, progress=False, stop=stop)
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


def _interrupted(spec: RunSpec, why: str) -> dict[str, Any]:
    return {"status": "interrupted", "metrics": {}, "error": why}


# -- worker side ---------------------------------------------------------------------------
def _set_parent_death_signal() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the watchdog alone notices
        pass


def _guard_worker(parent_pid: int, stop: threading.Event) -> None:
    """Signals and watchdog of a worker process (its own process: handlers are its to set).

    SIGINT is ignored (a Ctrl-C reaches the whole process group; the parent decides);
    the first SIGTERM sets ``stop`` (end after this step, with a checkpoint), a second one
    raises ``KeyboardInterrupt`` (end now). The watchdog sets ``stop`` when the parent is
    gone and exits the process ``ORPHAN_GRACE`` seconds later if it still runs.
    """

    def on_term(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    _set_parent_death_signal()

    # The study process is the parent (spawned) or the fork server's (forked from it):
    # watch both that it lives and that the process that started this one still does.
    starter = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != starter or not _alive(parent_pid)

    def watchdog() -> None:
        while not orphaned():
            time.sleep(WATCHDOG_PERIOD)
        stop.set()
        time.sleep(ORPHAN_GRACE)
        os._exit(3)

    threading.Thread(target=watchdog, name="normlab-watchdog", daemon=True).start()
    if orphaned():  # the parent died before the guard was up
        stop.set()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (never for a pid <= 0, which names process groups)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _worker_main(spec: RunSpec, conn, parent_pid: int) -> None:
    """Body of a worker process: one run, its outcome sent back through ``conn``."""
    stop = threading.Event()
    _guard_worker(parent_pid, stop)
    try:
        outcome = _train_one(spec, stop=stop.is_set)
    except KeyboardInterrupt:
        outcome = _interrupted(spec, "stopped by a second signal, before its step ended")
    try:
        conn.send(outcome)
        conn.close()
    except (OSError, EOFError):  # the parent is gone
        pass
    # Everything is written and closed: skip the interpreter's teardown, which collects
    # torch's objects for seconds (10 s and more on a loaded machine) while the parent waits.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- parent side ---------------------------------------------------------------------------
def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_grid(
    runs: list[RunSpec],
    workers: int | None = None,
    *,
    stop: threading.Event | None = None,
    grace: float = GRACE_S,
) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    """Yield ``(spec, outcome)`` for every run, finished ones first, the rest as they end.

    ``workers`` processes (default: the core count) run at once; ``workers=1`` runs in
    this process (no pool), which is what tests and debuggers want. When ``stop`` is set
    the runs under way end at their next step (status ``interrupted``, a checkpoint at that
    step), nothing new starts and ``StudyInterrupted`` is raised after the last outcome.
    However the generator ends (exhausted, an exception, closed), no worker outlives it.
    """
    pending = []
    for spec in runs:
        done = finished_result(spec.run_dir, spec.config.steps)
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
    stopped = stop.is_set if stop is not None else (lambda: False)
    unfinished: list[RunSpec] = []
    if workers == 1 or len(pending) <= 1:
        for i, spec in enumerate(pending):
            if stopped():
                unfinished += pending[i:]
                break
            outcome = _train_one(spec, stop=stopped)
            if outcome["status"] == "interrupted":
                unfinished.append(spec)
            yield spec, outcome
    else:
        yield from _run_pool(pending, workers, stopped, grace, unfinished)
    if unfinished:
        order = {spec.run_dir: i for i, spec in enumerate(runs)}
        unfinished.sort(key=lambda spec: order[spec.run_dir])
        raise StudyInterrupted(unfinished, len(runs))


def _run_pool(
    pending: list[RunSpec],
    workers: int,
    stopped,
    grace: float,
    unfinished: list[RunSpec],
) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    """The runs in ``workers`` processes at a time (one process per run)."""
    context = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    queue = longest_first(pending)
    running: dict[Any, tuple[Any, RunSpec]] = {}  # receiving end -> (process, spec)
    deadline = None
    try:
        while queue or running:
            if deadline is None and stopped():
                deadline = time.monotonic() + grace
                unfinished += queue
                queue.clear()
                for proc, _ in running.values():
                    if proc.is_alive():
                        os.kill(proc.pid, signal.SIGTERM)
            while queue and len(running) < workers:
                spec = queue.pop(0)
                recv, send = context.Pipe(duplex=False)
                proc = context.Process(
                    target=_worker_main,
                    args=(spec, send, os.getpid()),
                    name=f"normlab-{spec.group}-seed{spec.seed}",
                    daemon=True,
                )
                proc.start()
                send.close()
                running[recv] = (proc, spec)
            ready = wait_ready([*running, *(p.sentinel for p, _ in running.values())], timeout=0.2)
            for recv in list(running):
                proc, spec = running[recv]
                got = recv in ready and recv.poll()
                if not got and proc.sentinel not in ready:
                    continue
                outcome = None
                if got or recv.poll():
                    try:
                        outcome = recv.recv()
                    except (EOFError, OSError):
                        outcome = None
                if outcome is None:
                    if proc.is_alive():
                        continue  # a closed pipe a moment before the exit
                    outcome = (
                        _interrupted(spec, "stopped before its step ended")
                        if deadline is not None
                        else {
                            "status": "failed",
                            "metrics": {},
                            "error": f"worker process died (exit code {proc.exitcode})",
                        }
                    )
                proc.join()
                recv.close()
                del running[recv]
                if outcome["status"] == "interrupted":
                    unfinished.append(spec)
                yield spec, outcome
            if deadline is not None and time.monotonic() > deadline:
                for recv, (proc, spec) in list(running.items()):
                    proc.kill()
                    proc.join()
                    recv.close()
                    unfinished.append(spec)
                    yield spec, _interrupted(spec, f"killed {grace:g} s after SIGTERM")
                running.clear()
    finally:
        _end_all([p for p, _ in running.values()])


def _end_all(procs: list) -> None:
    """SIGTERM every live worker, then SIGKILL what still lives a moment later."""
    for proc in procs:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + 2.0
    for proc in procs:
        proc.join(max(0.0, end - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
