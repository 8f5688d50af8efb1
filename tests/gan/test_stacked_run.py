"""Stacked digits end to end: a short training run, the small-D option, and a study's report."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from normlab.gan.config import TrainConfig
from normlab.gan.models import build_models
from normlab.gan.trainer import train
from normlab.metrics import IMAGE_METRICS, STACKED_METRICS
from normlab.study.compare import run_study


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_d_width_shrinks_the_discriminator_alone():
    g, d = build_models("cnn", (3, 8, 8), 32, 16)
    g4, d4 = build_models("cnn", (3, 8, 8), 32, 16, d_width=4)
    assert _n_params(g4) == _n_params(g)
    convs = [m for m in d4.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 32]  # 1/4 of width 16's
    assert _n_params(d4) < _n_params(d) / 10
    _, dm = build_models("mlp", (12,), 8, 64, d_width=16)
    assert dm.net[0].out_features == 16
    with pytest.raises(ValueError, match="d_width must be positive, got 0"):
        TrainConfig(d_width=0)


@pytest.mark.slow
def test_short_stacked_digits_run_end_to_end(tmp_path, digit_classifier_cache):
    cfg = TrainConfig.preset(
        "stacked-digits",
        method="bssn",
        steps=4,
        log_every=2,
        eval_every=0,
        ckpt_every=2,
        eval_samples=300,
        feature_cache=digit_classifier_cache,
    )
    assert cfg.d_width == 4 and cfg.width == 16  # the small-D preset
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["status"] == "finished"
    m = out["metrics"]
    assert list(m) == list(STACKED_METRICS) + list(IMAGE_METRICS)
    assert 1 <= m["modes_covered"] <= 1000 and 0 <= m["kl"] <= math.log(1000) + 1e-9
    assert m["classifier_accuracy"] >= 0.97
    assert all(math.isfinite(v) for v in m.values())
    with Image.open(tmp_path / "run" / "samples" / "final.png") as im:
        assert im.mode == "RGB" and im.size[0] >= 8 * 32  # 8x8 grid of 8x8 images, enlarged

    (tmp_path / "study").mkdir()
    shutil.copy(digit_classifier_cache, tmp_path / "study" / "digit_classifier.pt")  # no retraining
    records = run_study(
        cfg.replace(steps=2, ckpt_every=0, feature_cache=None),
        ["sn"],
        [0],
        tmp_path / "study",
        workers=1,
    )
    assert [r["status"] for r in records] == ["finished"]
    # The study's runs share one classifier file instead of training one each.
    assert {r["config"]["feature_cache"] for r in records} == {
        str(tmp_path / "study" / "digit_classifier.pt")
    }
    report = (tmp_path / "study" / "report.md").read_text()
    for text in ("modes_covered", "| kl", "fid", "Published Stacked MNIST", "28x28 MNIST"):
        assert text in report
    assert "78.5 ± 17.6" in report  # PacGAN Table 3's DCGAN at D = 1/4 G, beside ours
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert saved[0]["metrics"]["modes_covered"] >= 1
