"""Checkpoints: atomic, verified, never executing code, refusing other kinds of runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from normlab.gan.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from normlab.gan.evaluate import evaluate_run
from normlab.gan.trainer import train

from ._util import assert_identical, tiny


def _payload(v: float) -> dict:
    return {"G": {"w": torch.full((3,), v)}, "history": [{"step": 1, "x": 0.5}], "note": None}


def test_save_load_and_keep(tmp_path):
    for step in (0, 10, 20):
        save_checkpoint(tmp_path, step, _payload(step), keep=2)
    files = list_checkpoints(tmp_path)
    assert [p.name for p in files] == ["step_00000010.pt", "step_00000020.pt"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    _, ck, skipped = latest_checkpoint(tmp_path)
    assert ck["step"] == 20 and torch.equal(ck["G"]["w"], torch.full((3,), 20.0)) and not skipped


def test_truncated_or_damaged_checkpoint_falls_back(tmp_path):
    save_checkpoint(tmp_path, 10, _payload(1), keep=3)
    save_checkpoint(tmp_path, 20, _payload(2), keep=3)
    newest = checkpoint_path(tmp_path, 20)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(newest)
    _, ck, skipped = latest_checkpoint(tmp_path)
    assert ck["step"] == 10 and len(skipped) == 1 and "step_00000020.pt" in skipped[0]
    # without the checksum file, torch's own zip reader still catches the truncation
    newest.with_name(newest.name + ".sha256").unlink()
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(newest)
    # a flipped byte is caught by the checksum
    older = checkpoint_path(tmp_path, 10)
    raw = bytearray(older.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    older.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(older)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        latest_checkpoint(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = checkpoint_path(tmp_path, 5)
    path.parent.mkdir(parents=True)
    torch.save({"format": "normlab-run-checkpoint/1", "step": 5, "G": _Evil(marker)}, path)
    with pytest.raises(
        CheckpointError, match="refusing to load .*could run code.*trust its source"
    ):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"some": "dict"}, path)
    with pytest.raises(CheckpointError, match="not a normlab run checkpoint"):
        load_checkpoint(path)


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_resume_skips_a_malicious_newest_checkpoint(tmp_path):
    ref = train(tiny(steps=40), tmp_path / "ref", progress=False)
    train(tiny(steps=20, ckpt_every=10), tmp_path / "run", progress=False)
    marker = tmp_path / "pwned"
    torch.save(
        {"format": "normlab-run-checkpoint/1", "step": 30, "G": _Evil(marker)},
        checkpoint_path(tmp_path / "run", 30),
    )
    with pytest.warns(
        UserWarning, match="refusing to load.*using the previous checkpoint step_00000020"
    ):
        out = train(tiny(steps=40, ckpt_every=10), tmp_path / "run", resume=True, progress=False)
    assert not marker.exists()
    assert out["metrics"] == ref["metrics"]
    assert_identical(
        load_checkpoint(checkpoint_path(tmp_path / "run", 40))["G"],
        load_checkpoint(checkpoint_path(tmp_path / "ref", 40))["G"],
    )


def test_checkpoint_from_another_run_kind_is_refused(tmp_path):
    train(tiny(steps=10, method="sn"), tmp_path / "sn", progress=False)
    train(tiny(steps=10, method="wn"), tmp_path / "wn", progress=False)
    # put the SN run's checkpoint into the WN run
    for p in list_checkpoints(tmp_path / "wn"):
        p.unlink()
        p.with_name(p.name + ".sha256").unlink()
    src = list_checkpoints(tmp_path / "sn")[-1]
    dst = tmp_path / "wn" / "checkpoints" / src.name
    dst.write_bytes(src.read_bytes())
    with pytest.raises(
        CheckpointError, match=r"another kind of run .*d_method: checkpoint 'sn', this run 'wn'"
    ):
        evaluate_run(tmp_path / "wn")
    with pytest.raises(CheckpointError, match="another kind of run"):
        train(tiny(steps=20, method="wn"), tmp_path / "wn", resume=True, progress=False)
