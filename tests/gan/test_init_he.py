"""``init="he"``: the initialisation of equalized lr without its runtime scaling (the ablation
that separates the two), and checkpoints written before the option existed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.gan.checkpoint import CheckpointError
from normlab.gan.config import TrainConfig
from normlab.gan.run import build_networks, check_compatible, init_he, load_run_data, signature

LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, LAYERS)]


@pytest.mark.parametrize("data", ["ring8", "stacked-digits"])
def test_he_init_equals_eqlrs_initial_effective_weights(data):
    """Same seed: the plain networks under init=he hold exactly the weights eqlr's layers
    compute at step 0 (raw N(0,1) times sqrt(2)/sqrt(fan_in)), biases zero in both."""
    he = TrainConfig.preset(data, method="none", init="he").resolved()
    eq = TrainConfig.preset(data, method="eqlr").resolved()
    nets_he = build_networks(he, load_run_data(he))
    nets_eq = build_networks(eq, load_run_data(eq))
    for a, b in zip(nets_he, nets_eq):
        wa, wb = _weights(a), _weights(b)
        assert len(wa) == len(wb) > 0
        for x, y in zip(wa, wb):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=0)
        biases = [m.bias for m in a.modules() if isinstance(m, LAYERS) and m.bias is not None]
        assert all(float(b.detach().abs().max()) == 0.0 for b in biases)
    default = TrainConfig.preset(data, method="none").resolved()
    plain = _weights(build_networks(default, load_run_data(default))[1])
    assert any(not torch.equal(x, y) for x, y in zip(plain, _weights(nets_he[1])))


def test_init_he_leaves_eqlr_networks_to_their_own_draw():
    """``--methods none,eqlr --set init=he``: the eqlr runs are the plain eqlr runs."""
    cfg = TrainConfig.preset("ring8", method="eqlr").resolved()
    with_he = build_networks(cfg.replace(init="he"), load_run_data(cfg))
    without = build_networks(cfg, load_run_data(cfg))
    for a, b in zip(with_he, without):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(x, y)


def test_he_std_is_sqrt_two_over_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.Conv2d(16, 32, 3))
    init_he(model)
    for layer, fan in ((model[0], 400), (model[1], 16 * 9)):
        assert float(layer.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan), rel=0.03)


def test_bad_init_settings():
    with pytest.raises(ValueError, match="init must be one of"):
        TrainConfig(init="xavier")
    with pytest.raises(ValueError, match="both set"):
        TrainConfig(init="he", init_std=0.02)


def test_checkpoints_from_before_the_init_field_still_fit(tmp_path):
    cfg = TrainConfig.preset("ring8").resolved()
    old = {k: v for k, v in signature(cfg).items() if k != "init"}
    check_compatible({"signature": old}, cfg, tmp_path / "step.pt")  # default init: fits
    with pytest.raises(CheckpointError, match="init: checkpoint 'default', this run 'he'"):
        check_compatible({"signature": old}, cfg.replace(init="he"), tmp_path / "step.pt")
