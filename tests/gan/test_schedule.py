"""Learning-rate schedules: the factors by formula, and the optimizers following them."""

import math

import pytest

from normlab.gan.checkpoint import checkpoint_path, load_checkpoint
from normlab.gan.config import TrainConfig
from normlab.gan.schedule import lr_factor
from normlab.gan.trainer import train

from ._util import tiny


def test_factors():
    assert [lr_factor("linear", s, 4) for s in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor("cosine", 1, 10) == 1.0
    assert lr_factor("cosine", 6, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx((1 + math.cos(math.pi * 0.9)) / 2)
    assert lr_factor("none", 7, 10) == 1.0
    with pytest.raises(ValueError, match="lr_decay must be one of none, linear, cosine"):
        lr_factor("step", 1, 10)
    with pytest.raises(ValueError, match=r"step must lie in \[1, steps=10\], got 11"):
        lr_factor("linear", 11, 10)
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        TrainConfig(lr_decay="exp")


def test_optimizers_follow_the_schedule(tmp_path):
    cfg = tiny(steps=20, eval_every=10, ckpt_every=10, lr_decay="linear", lr_d=4e-4, lr_g=2e-4)
    assert train(cfg, tmp_path, progress=False)["status"] == "finished"
    ck = load_checkpoint(checkpoint_path(tmp_path, 20))
    # the last step (20 of 20) ran at 1/20 of the base rates
    assert ck["opt_d"]["param_groups"][0]["lr"] == pytest.approx(4e-4 / 20)
    assert ck["opt_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 20)
    ck10 = load_checkpoint(checkpoint_path(tmp_path, 10))
    assert ck10["opt_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 11 / 20)
