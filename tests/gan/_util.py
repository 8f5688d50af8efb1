"""Helpers for the GAN tests: tiny configs and exact comparisons of saved states."""

from __future__ import annotations

import torch

from normlab.gan.config import TrainConfig


def tiny(**kw) -> TrainConfig:
    """A ring8 run that takes about a second."""
    base = dict(
        steps=40,
        width=32,
        batch_size=64,
        log_every=10,
        eval_every=20,
        ckpt_every=20,
        eval_samples=500,
    )
    base.update(kw)
    return TrainConfig(**base)


def assert_identical(a, b, path: str = "") -> None:
    """Tensors equal bit for bit, recursively through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def training_state(payload: dict) -> dict:
    """The parts of a checkpoint that training produces (not wall time)."""
    return {
        k: payload[k]
        for k in ("step", "G", "D", "G_ema", "opt_d", "opt_g", "data", "rng", "history")
    }
