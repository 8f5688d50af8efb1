"""Equalized learning rate: the formula, the init, and the property that defines it."""

import math

import pytest
import torch
from torch import nn

import normlab as nl
from tests.reparam._layers import layer_cases

CASES = layer_cases()


@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=[c[0] for c in CASES]
)
def test_effective_weight_is_raw_times_he_constant(name, make, fan_in, out_dim, shape):
    layer = nl.equalized_lr(make(), gain=1.5, lr_multiplier=0.1)
    raw = layer.reparam.raw_weight
    # fan_in written out by hand per layer kind in tests/reparam/_layers.py
    torch.testing.assert_close(layer.weight, raw * 1.5 * 0.1 / math.sqrt(fan_in))
    assert layer.reparam.fan_in == fan_in


def test_raw_init_and_bias():
    torch.manual_seed(0)
    layer = nl.equalized_lr(nn.Linear(400, 300), lr_multiplier=0.01)
    raw = layer.reparam.raw_weight.detach()
    assert raw.std().item() == pytest.approx(100.0, rel=0.02)  # N(0, 1/lr_mul^2)
    assert raw.mean().abs().item() < 1.0
    # Effective weight: He init, std gain / sqrt(fan_in).
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2) / math.sqrt(400), rel=0.02)
    assert torch.count_nonzero(layer.reparam.raw_bias) == 0
    with torch.no_grad():
        layer.reparam.raw_bias.fill_(3.0)
    torch.testing.assert_close(layer.bias, torch.full((300,), 0.03))
    x = torch.randn(2, 400)
    torch.testing.assert_close(layer(x), x @ layer.weight.t() + 0.03)


def test_adam_moves_every_layer_by_the_same_relative_amount():
    """The defining property (ProGAN 4.1): under Adam the relative step is fan-in independent.

    Plain He-initialised layers get relative steps that grow with sqrt(fan_in); with
    equalized learning rate they are equal.
    """

    def relative_steps(equalized: bool) -> list[float]:
        torch.manual_seed(0)
        layers = [nn.Linear(fan, 32) for fan in (16, 256, 4096)]
        for layer in layers:
            if equalized:
                nl.equalized_lr(layer)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        before = [layer.weight.detach().clone() for layer in layers]
        opt = torch.optim.Adam([p for layer in layers for p in layer.parameters()], lr=1e-3)
        loss = sum((layer(torch.randn(8, layer.in_features)) ** 2).mean() for layer in layers)
        loss.backward()
        opt.step()
        return [
            ((layer.weight.detach() - b).norm() / b.norm()).item()
            for layer, b in zip(layers, before)
        ]

    eq = relative_steps(True)
    plain = relative_steps(False)
    assert max(eq) / min(eq) < 1.15  # sampling noise of the smallest layer (512 weights)
    assert plain[-1] / plain[0] > 10  # sqrt(4096 / 16) = 16


def test_ineffective_arguments_are_refused():
    for kw in (
        {"gain": 0},
        {"gain": -1.0},
        {"lr_multiplier": 0.0},
        {"lr_multiplier": float("nan")},
    ):
        layer = nn.Linear(3, 2)
        w = layer.weight.detach().clone()
        with pytest.raises(ValueError, match=next(iter(kw))):
            nl.equalized_lr(layer, **kw)
        assert type(layer) is nn.Linear
        assert torch.equal(layer.weight, w)
    with pytest.raises(TypeError, match="gain"):
        nl.equalized_lr(nn.Linear(3, 2), gain="2")
