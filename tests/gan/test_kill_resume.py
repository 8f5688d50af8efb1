"""Crash safety: SIGKILL a training process at random points, resume each time, lose at most one
checkpoint interval, and end with weights bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.gan.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
)

from ._util import assert_identical, training_state

STEPS = 200
CKPT_EVERY = 20
ARGS = [
    "--data",
    "ring8",
    "--method",
    "bssn",
    "--steps",
    str(STEPS),
    "--no-progress",
    "--set",
    "width=64",
    "--set",
    f"ckpt_every={CKPT_EVERY}",
    "--set",
    "log_every=5",
    "--set",
    "eval_every=100",
    "--set",
    "eval_samples=300",
    "--set",
    "threads=1",
    "--set",
    "ema=0.95",
]


def _cmd(out: Path, resume: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "normlab",
        "train",
        *ARGS,
        "--out",
        str(out),
        *(["--resume"] if resume else []),
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _logged_steps(run: Path) -> list[int]:
    path = run / "log.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            break  # a line cut by the kill
    return steps


def _good_checkpoint_step(run: Path) -> int:
    for p in reversed(list_checkpoints(run)):
        try:
            return load_checkpoint(p)["step"]
        except CheckpointError:
            continue
    return -1


@pytest.mark.slow
def test_sigkill_and_resume_reaches_identical_weights(tmp_path):
    rng = random.Random(1234)
    ref = tmp_path / "ref"
    assert main(_cmd(ref, False)[3:]) == 0  # the reference in this process: same settings

    run = tmp_path / "run"
    kills = 0
    targets = sorted(rng.sample(range(10, STEPS - 10), 3))
    for target in targets:
        proc = subprocess.Popen(
            _cmd(run, True), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            steps = _logged_steps(run)
            if steps and steps[-1] >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # land anywhere: mid-step, mid-checkpoint-write ...
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill at step {target}: {proc.stderr.read()!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        reached = _logged_steps(run)[-1]
        resumable = _good_checkpoint_step(run)
        assert resumable >= reached - CKPT_EVERY, (reached, resumable)  # at most one interval lost

    done = subprocess.run(_cmd(run, True), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert kills == len(targets)
    final = training_state(load_checkpoint(checkpoint_path(run, STEPS)))
    expected = training_state(load_checkpoint(checkpoint_path(ref, STEPS)))
    assert_identical(final, expected)
    steps = _logged_steps(run)
    assert steps == list(range(5, STEPS + 1, 5))  # the log was rewound to each resume point
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads((ref / "metrics.json").read_text())
