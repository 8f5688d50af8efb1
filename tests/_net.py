"""Helpers for tests that start process groups on this machine.

A rank stuck in a collective blocks forever, and ``mp.spawn(join=True)`` or
``subprocess.run(capture_output=True)`` block with it (the latter waits for grandchildren that
hold its pipes even after its own timeout kills the child). Every multi-process test goes
through :func:`run_ranks` or :func:`run_command`, which kill the whole process tree at a
deadline and fail with what the processes printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

import torch.multiprocessing as mp

RANKS_TIMEOUT_S = 240.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a torch.distributed group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    fn: Callable[..., None], args: tuple, nprocs: int = 2, timeout: float = RANKS_TIMEOUT_S
) -> None:
    """``fn(rank, *args)`` in ``nprocs`` spawned processes; raises if one fails or all hang.

    A failing rank raises ``ProcessRaisedException`` (the others are terminated by torch);
    ranks still running at ``timeout`` seconds are killed and ``TimeoutError`` is raised.
    """
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(5)
            stuck = [i for i, p in enumerate(ctx.processes) if p.exitcode == -signal.SIGKILL]
            raise TimeoutError(
                f"{fn.__name__} on {nprocs} ranks did not finish within {timeout:.0f} s; "
                f"killed ranks {stuck} (stuck in a collective or in rendezvous?)"
            )


def run_command(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session, capture its output, kill its whole tree at ``timeout``."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(
            f"{' '.join(cmd)} did not finish within {timeout:.0f} s (killed its process group)\n"
            f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
