"""Class Normalization's claim at a reduced size: the CN model beats the plain MLP on H."""

import json

import pytest
import torch

from normlab.experiments import classnorm


def test_task_generator_is_documented_shape_and_deterministic():
    cfg = classnorm.ClassNormConfig(samples_per_class=10)
    a, b = classnorm.make_task(cfg, 3), classnorm.make_task(cfg, 3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.attrs, b.attrs)
    assert a.attrs.shape == (cfg.num_classes, cfg.attr_dim)
    assert len(a.unseen) == cfg.num_unseen and len(a.seen) == cfg.num_classes - cfg.num_unseen
    assert not torch.isin(a.y_train, a.unseen).any()  # unseen classes never in training
    assert torch.isin(a.y_test_unseen, a.unseen).all()
    assert (a.x_train >= 0).all()  # non-negative, like CNN features
    assert (a.attrs.sum(1) > 0).all()


def test_harmonic_mean():
    assert classnorm.harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert classnorm.harmonic_mean(1.0, 0.0) == 0.0


@pytest.mark.slow
def test_class_norm_beats_plain_mlp_on_harmonic_mean(tmp_path):
    result = classnorm.run(tmp_path, quick=True)
    summary = result["summary"]
    # On average over the seeds, and on each seed.
    assert summary["class_norm"]["H"] > summary["plain"]["H"] + 0.05
    for cn, plain in zip(result["runs"]["class_norm"], result["runs"]["plain"]):
        assert cn["H"] > plain["H"]
    assert result["claims"]["class_norm_beats_plain_on_H"]
    data = json.loads((tmp_path / "classnorm.json").read_text())
    assert data["summary"]["class_norm"]["H"] == pytest.approx(summary["class_norm"]["H"])
    assert (tmp_path / "classnorm.png").stat().st_size > 0
