"""Equalized learning rate at --quick size: the relative updates recomputed from saved weights."""

import json
import math

import pytest
import torch

from normlab.experiments import eqlr


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("eqlr")
    return out, eqlr.run(out, quick=True)


def _coefs(cfg):
    fans = list(cfg["widths"][:-1])
    n = len(fans)
    gain = math.sqrt(2 / (1 + 0.2**2))  # He's gain for LeakyReLU(0.2); 1 on the last layer
    return fans, [(1.0 if i == n - 1 else gain) / math.sqrt(f) for i, f in enumerate(fans)]


@pytest.mark.slow
def test_relative_update_recomputed_from_saved_weights(quick):
    out, _result = quick
    saved = torch.load(out / "eqlr_weights.pt", weights_only=True)
    data = json.loads((out / "eqlr.json").read_text())
    for key, layers in saved.items():
        by_hand = [float((w["after"] - w["before"]).norm() / w["before"].norm()) for w in layers]
        assert by_hand == pytest.approx(data["relative_update"][key]["first_rel_update"], rel=1e-5)
    # Both parametrizations start from the same effective weights.
    for k in range(len(saved["adam_he"])):
        assert torch.equal(saved["adam_he"][k]["before"], saved["adam_eqlr"][k]["before"])
    assert (out / "eqlr.png").stat().st_size > 0


@pytest.mark.slow
def test_adam_moves_stored_parameters_by_lr_so_eqlr_equalizes(quick):
    out, result = quick
    cfg = result["config"]
    lr = cfg["adam_lr"]
    saved = torch.load(out / "eqlr_weights.pt", weights_only=True)
    fans, coefs = _coefs(cfg)
    for k, c in enumerate(coefs):
        # Adam's first step is lr * sign(grad) on the stored parameter: W_eff itself (He) or
        # W_raw = W_eff / c (eqlr); every entry with a gradient moves by exactly that.
        he = (saved["adam_he"][k]["after"] - saved["adam_he"][k]["before"]).abs()
        eq = (saved["adam_eqlr"][k]["after"] - saved["adam_eqlr"][k]["before"]).abs()
        assert he.median() == pytest.approx(lr, rel=1e-3)
        assert eq.median() == pytest.approx(lr * c, rel=1e-3)
    # Relative update: ~lr on every layer with eqlr, ~lr * sqrt(fan_in) / gain with He.
    ru = result["relative_update"]
    assert ru["adam_eqlr"]["first_rel_update"] == pytest.approx([lr] * len(fans), rel=0.1)
    he_first = ru["adam_he"]["first_rel_update"]
    expected = [lr / c for c in coefs]  # ||W_eff|| ~ c * sqrt(numel), ||dW|| = lr * sqrt(numel)
    assert he_first == pytest.approx(expected, rel=0.1)
    assert ru["adam_eqlr"]["spread"] < 1.5 < 10 < ru["adam_he"]["spread"]
    assert abs(ru["adam_he"]["slope_vs_fan_in"] - 0.5) < 0.1
    assert abs(ru["adam_eqlr"]["slope_vs_fan_in"]) < 0.05


@pytest.mark.slow
def test_under_sgd_eqlr_scales_each_layers_step_by_coef_squared(quick):
    out, result = quick
    saved = torch.load(out / "eqlr_weights.pt", weights_only=True)
    _, coefs = _coefs(result["config"])
    for k, c in enumerate(coefs):
        d_he = saved["sgd_he"][k]["after"] - saved["sgd_he"][k]["before"]
        d_eq = saved["sgd_eqlr"][k]["after"] - saved["sgd_eqlr"][k]["before"]
        # The same gradient of the effective weight (same weights, same batch): eqlr's step is
        # c^2 times He's. Compared through norms and direction: the smallest steps are near
        # float32's resolution of the weights they are added to.
        assert float(d_eq.norm() / d_he.norm()) == pytest.approx(c**2, rel=1e-2)
        cos = torch.nn.functional.cosine_similarity(d_eq.flatten(), d_he.flatten(), dim=0)
        assert float(cos) > 0.99
    assert result["relative_update"]["sgd_eqlr"]["spread"] > 2  # not equalized


@pytest.mark.slow
def test_lr_multiplier_moves_the_mapping_100x_slower(quick):
    _, result = quick
    mult = result["lr_multiplier"]
    assert mult["same_initial_weights"]
    for r in mult["ratio_mean_rel_update"]:
        assert r == pytest.approx(0.01, rel=0.2)


@pytest.mark.slow
def test_training_outcome_is_reported_per_lr_and_seed(quick):
    _, result = quick
    cfg = result["config"]
    runs = result["training"]["runs"]
    assert len(runs) == 2 * len(cfg["train_lrs"]) * len(cfg["seeds"])
    for p in eqlr.PARAMS:
        for row in result["training"]["by_lr"][p]:
            finals = [
                r["final_train_loss"] for r in runs if r["param"] == p and r["lr"] == row["lr"]
            ]
            if None not in finals:
                assert row["mean_final_train_loss"] == pytest.approx(sum(finals) / len(finals))


def test_bad_parametrization_is_rejected():
    with pytest.raises(ValueError, match="unknown parametrization 'xavier'"):
        eqlr.build_mlp((64, 10), "xavier", 0)
