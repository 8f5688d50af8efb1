"""layer_report and input_gradient_norm: exact numbers on small models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator


def small_d() -> nn.Module:
    torch.manual_seed(0)
    return StandardCNNDiscriminator(resolution=8, channels=1, width=4)


def dense_operator_norm(conv: nn.Conv2d, weight: torch.Tensor, shape: tuple[int, ...]) -> float:
    """The conv's operator norm from its explicitly formed matrix."""
    n = math.prod(shape)
    eye = torch.eye(n).reshape(n, *shape)
    cols = conv._conv_forward(eye, weight, None).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols, ord=2))


@pytest.mark.parametrize("method", ["none", "sn", "bsn", "sn_exact", "eqlr", "wn"])
def test_layer_report_numbers(method: str) -> None:
    D = small_d()
    x = torch.randn(5, 1, 8, 8)
    D(x)
    nl.apply(D, method)
    for _ in range(30):  # converge the power iterations
        D(x)
    D.eval()  # no power step, so the reference below sees the same effective weights
    rep = nl.diagnostics.layer_report(D, x)
    assert list(rep.layers) == [f"features.{i}" for i in range(0, 14, 2)] + ["head"]
    # Reference: the effective weights as leaves, the same loss, plain autograd.
    weights = {
        n: m.weight.detach().clone().requires_grad_(True)
        for n, m in D.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }
    h = x
    shapes = {}
    for i in range(0, 14, 2):
        conv = D.features[i]
        shapes[f"features.{i}"] = tuple(h.shape[1:])
        h = F.leaky_relu(conv._conv_forward(h, weights[f"features.{i}"], conv.bias), 0.1)
    out = F.linear(h.flatten(1), weights["head"], D.head.bias).squeeze(1)
    grads = torch.autograd.grad(out.mean(), list(weights.values()))
    bound = 1.0
    for (name, w), g in zip(weights.items(), grads):
        row = rep.layers[name]
        mat = w.detach().reshape(w.shape[0], -1)
        assert row["method"] == method
        assert row["sigma"] == pytest.approx(float(torch.linalg.matrix_norm(mat, ord=2)), rel=1e-4)
        assert row["weight_grad_norm"] == pytest.approx(float(g.norm()), rel=1e-4)
        fan = mat.shape[1]
        assert row["std_sqrt_fan_in"] == pytest.approx(
            float(w.detach().std()) * math.sqrt(fan), rel=1e-4
        )
        if name != "head":
            ref = dense_operator_norm(D.get_submodule(name), w.detach(), shapes[name])
            assert row["op_norm"] == pytest.approx(ref, rel=1e-3)
        bound *= row["op_norm"]
    assert rep.lipschitz_bound == pytest.approx(bound, rel=1e-6)  # LeakyReLU(0.1) is 1-Lipschitz
    assert rep.loss == pytest.approx(float(out.detach().mean()), rel=1e-5)
    if method == "sn":
        assert all(r["sigma"] == pytest.approx(1.0, rel=5e-2) for r in rep.layers.values())
    if method == "sn_exact":
        convs = [r for n, r in rep.layers.items() if n != "head"]
        assert all(r["op_norm"] == pytest.approx(1.0, rel=5e-2) for r in convs)
    assert "Lipschitz bound" in str(rep)


def test_layer_report_has_no_side_effects() -> None:
    D = small_d()
    D.features.insert(1, nn.BatchNorm2d(4))  # running statistics would move
    nl.apply(D, "sn")
    x = torch.randn(6, 1, 8, 8)
    buffers = {n: b.clone() for n, b in D.named_buffers()}
    rep = nl.diagnostics.layer_report(D, x, loss_fn=lambda out: (out**2).mean())
    assert all(torch.equal(b, buffers[n]) for n, b in D.named_buffers())
    assert all(p.grad is None for p in D.parameters())
    assert rep.layers["features.0"]["weight_grad_norm"] > 0
    assert math.isfinite(rep.lipschitz_bound)  # BatchNorm counts with its eval-mode constant


def test_layer_report_errors() -> None:
    with pytest.raises(TypeError, match="inputs"):
        nl.diagnostics.layer_report(small_d())
    with pytest.raises(ValueError, match="no weighted layer"):
        nl.diagnostics.layer_report(nn.ReLU(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="scalar"):
        nl.diagnostics.layer_report(small_d(), torch.randn(2, 1, 8, 8), loss_fn=lambda o: o)


def test_unknown_module_makes_bound_nan() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 3

    net = nn.Sequential(nn.Linear(3, 4), Odd(), nn.Linear(4, 1))
    rep = nl.diagnostics.layer_report(net, torch.randn(2, 3))
    assert math.isnan(rep.lipschitz_bound)
    assert rep.unknown_modules == ["1"]


def test_input_gradient_norm_linear() -> None:
    lin = nn.Linear(6, 1)
    x = torch.randn(4, 6)
    norms = nl.diagnostics.input_gradient_norm(lin, x)
    assert norms.shape == (4,)
    assert torch.allclose(norms, lin.weight.norm().expand(4))
    assert lin.weight.grad is None and not norms.requires_grad


def test_input_gradient_norm_per_sample_and_below_bound() -> None:
    D = small_d()
    nl.apply(D, "sn").eval()  # eval: no power step between the passes compared
    x = torch.randn(7, 1, 8, 8)
    norms = nl.diagnostics.input_gradient_norm(D, x)
    for i in range(3):  # each sample's own gradient
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi).sum(), xi)
        assert norms[i] == pytest.approx(float(g.norm()), rel=1e-4)
    assert float(norms.max()) <= nl.diagnostics.layer_report(D, x).lipschitz_bound


def test_input_gradient_norm_errors() -> None:
    with pytest.raises(ValueError, match="one score per sample"):
        nl.diagnostics.input_gradient_norm(nn.Linear(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-empty"):
        nl.diagnostics.input_gradient_norm(nn.Linear(3, 1), torch.randn(0, 3))
