"""Signals reach real processes: Ctrl-C / SIGTERM stop ``normlab compare`` and ``normlab train``
within seconds with every worker gone and a checkpoint at the step reached; workers of a
SIGKILLed study end on their own. Timings are printed (``pytest -s``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.gan.checkpoint import list_checkpoints, load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc"),
]

SRC = str(Path(__file__).resolve().parents[2] / "src")
#: Runs that never end on their own (the test stops them), logging every step.
SLOW_RUN = ["--steps", "100000", "--set", "width=8", "--set", "log_every=1"]
SLOW_RUN += ["--set", "eval_every=0", "--set", "ckpt_every=100000", "--no-progress"]
#: Seconds within which a stopped study must be gone (a loaded 2-core machine: generous).
STOP_WITHIN = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _wait_for_logged_steps(run_dirs: list[Path], proc: subprocess.Popen, timeout=240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        logs = [d / "log.jsonl" for d in run_dirs]
        if all(p.is_file() and p.read_text().count("\n") >= 2 for p in logs):
            return
        time.sleep(0.2)
    raise AssertionError("the runs did not start training in time")


def _start_compare(out: Path) -> tuple[subprocess.Popen, list[Path]]:
    cmd = [sys.executable, "-m", "normlab", "compare", "--methods", "sn", "--seeds", "2"]
    cmd += ["--workers", "2", "--out", str(out), *SLOW_RUN]
    proc = subprocess.Popen(
        cmd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    runs = [out / "runs" / "sn" / f"seed{s}" for s in (0, 1)]
    _wait_for_logged_steps(runs, proc)
    return proc, runs


def _logged_step(run: Path) -> int:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_compare_with_checkpoints_and_no_process_left(tmp_path, signum):
    proc, runs = _start_compare(tmp_path / "study")
    family = _children(proc.pid)
    assert len([p for p in family if _alive(p)]) >= 2  # the two workers (+ resource tracker)
    before = {r: _logged_step(r) for r in runs}
    t0 = time.monotonic()
    if signum == signal.SIGINT:  # Ctrl-C: the terminal signals the whole process group
        os.killpg(proc.pid, signum)
    else:  # kill / a scheduler's pre-emption: the parent alone
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    left = [p for p in family if _alive(p)]
    t1 = time.monotonic()
    while left and time.monotonic() - t1 < 5:  # reaped by init a moment later
        time.sleep(0.1)
        left = [p for p in family if _alive(p)]
    print(f"\n{signal.Signals(signum).name}: compare exited {took:.2f} s after the signal")
    assert proc.returncode == 128 + signum, err
    assert not left, f"processes left: {left}"
    assert "resume with the same command" in err and "--out" in err, err
    assert took < STOP_WITHIN
    records = json.loads((tmp_path / "study" / "results.json").read_text())
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]
    for run in runs:
        last = list_checkpoints(run)[-1]
        step = int(load_checkpoint(last)["step"])
        # A checkpoint at the step reached (ckpt_every is 100000: only 0 and this one).
        assert step >= before[run] and step >= _logged_step(run) - 1, (run, step)


def test_workers_of_a_killed_study_end_on_their_own(tmp_path):
    proc, runs = _start_compare(tmp_path / "study")
    family = [p for p in _children(proc.pid) if _alive(p)]
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    while any(_alive(p) for p in family) and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    took = time.monotonic() - t0
    print(f"\nSIGKILL of the parent: its {len(family)} processes gone after {took:.2f} s")
    assert not [p for p in family if _alive(p)]
    assert took < 15
    for run in runs:  # the newest checkpoint is good (the orphans wrote one at their step)
        assert int(load_checkpoint(list_checkpoints(run)[-1])["step"]) >= 0


def test_a_signal_stops_train_with_a_checkpoint_at_the_step_reached(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "normlab", "train", "--out", str(out), *SLOW_RUN]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_logged_steps([out], proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    print(f"\nSIGINT: train exited {took:.2f} s after the signal")
    assert proc.returncode == 130, err
    assert f"normlab train --resume {out}" in err
    assert took < STOP_WITHIN
    step = int(load_checkpoint(list_checkpoints(out)[-1])["step"])
    assert step >= _logged_step(out) - 1 and step > 0


def test_the_watchdog_alone_ends_an_orphan():
    """The portable fallback (no PR_SET_PDEATHSIG): a worker whose study process is gone
    sets its stop flag at once and exits ORPHAN_GRACE seconds later."""
    code = (
        "import threading, time\n"
        "from normlab.study import runner\n"
        "runner._set_parent_death_signal = lambda: None\n"
        "stop = threading.Event()\n"
        "runner._guard_worker(-1, stop)\n"  # -1: no study process of that pid
        "print(stop.is_set(), time.time(), flush=True)\n"
        "time.sleep(120)\n"
    )
    from normlab.study.runner import ORPHAN_GRACE

    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300
    )
    took = time.time() - float(proc.stdout.split()[1])  # from the guard's start to the exit
    print(f"\norphan (watchdog only): exited {took:.2f} s after noticing")
    assert proc.stdout.split()[0] == "True" and proc.returncode == 3, proc.stderr
    assert ORPHAN_GRACE - 0.5 < took < ORPHAN_GRACE + 5
