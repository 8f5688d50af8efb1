"""Fixup's claims at a reduced size (digits)."""

import json

import pytest
import torch

from normlab.experiments import fixup


def test_standard_init_without_normalization_explodes_at_100_blocks():
    # The full depth (102 residual blocks): He init without normalization diverges at once,
    # Fixup's output at init is exactly zero (every branch and the classifier start at zero).
    cfg = fixup.FixupConfig(epochs=1, train_subset=128, lr_for={"he_no_norm": 0.01})
    result = fixup.run(None, config=cfg, variants=("he_no_norm",))
    assert result["residual_blocks"] == 102
    run = result["runs"]["he_no_norm"]
    assert run["diverged"] or run["stalled"]
    logit_std = run["logit_std_at_init"]
    assert logit_std is None or logit_std > 1e6
    model = fixup.build("fixup", cfg)
    x = fixup.load_digits_split(0)[0][:8]
    with torch.no_grad():
        assert float(model(x).abs().max()) == 0.0


@pytest.mark.slow
def test_fixup_trains_close_to_batchnorm_where_standard_init_fails(tmp_path):
    result = fixup.run(tmp_path, quick=True, variants=("fixup", "batchnorm", "he_no_norm"))
    runs = result["runs"]
    assert runs["he_no_norm"]["diverged"] or runs["he_no_norm"]["stalled"]
    assert not runs["fixup"]["diverged"] and not runs["batchnorm"]["diverged"]
    assert runs["fixup"]["final_test_acc"] > 0.9
    assert runs["fixup"]["final_test_acc"] >= runs["batchnorm"]["final_test_acc"] - 0.03
    assert result["claims"]["standard_init_without_norm_fails"]
    data = json.loads((tmp_path / "fixup.json").read_text())
    assert data["residual_blocks"] == 27
    assert (tmp_path / "fixup.png").stat().st_size > 0
