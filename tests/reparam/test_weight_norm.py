"""Weight normalization and its data-dependent init."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import normlab as nl
from tests.reparam._layers import layer_cases, sample_input

CASES = layer_cases()


@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=[c[0] for c in CASES]
)
def test_registration_keeps_the_function(name, make, fan_in, out_dim, shape):
    layer = make()
    x = sample_input(layer, shape)
    before = layer(x).detach()
    nl.weight_norm(layer, dim=None)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    assert layer.reparam.dim == out_dim
    assert layer.reparam.g.numel() == layer.reparam.v.shape[out_dim]


def test_formula_against_pytorch_weight_norm():
    torch.manual_seed(0)
    ours, theirs = nn.Conv2d(3, 5, 3), nn.Conv2d(3, 5, 3)
    theirs.load_state_dict(ours.state_dict())
    nl.weight_norm(ours)
    parametrizations.weight_norm(theirs)
    with torch.no_grad():
        g = torch.rand(5, 1, 1, 1) + 0.5
        ours.reparam.g.copy_(g)
        theirs.parametrizations.weight.original0.copy_(g)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))
    v = ours.reparam.v.detach()
    expected = g * v / v.flatten(1).norm(dim=1).reshape(5, 1, 1, 1)
    torch.testing.assert_close(ours.weight, expected)
    (ours(x) ** 2).sum().backward()
    (theirs(x) ** 2).sum().backward()
    # Two float32 computations (the formula against PyTorch's fused kernel): their rounding.
    tol = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        ours.reparam.g.grad, theirs.parametrizations.weight.original0.grad, **tol
    )
    torch.testing.assert_close(
        ours.reparam.v.grad, theirs.parametrizations.weight.original1.grad, **tol
    )


def _explicit_wn_layer(layer: nn.Module, v: torch.Tensor, g: torch.Tensor):
    """``layer``'s base forward with ``W = g * v / ||v||`` written out (autograd throughout)."""
    dims = [d for d in range(v.dim()) if d != layer.reparam.dim]
    weight = g * v / v.square().sum(dim=dims, keepdim=True).sqrt()
    plain, bias = layer._normlab_base.forward, layer._parameters.get("bias")

    def forward(x):
        clone = copy.copy(layer)
        clone.__class__ = layer._normlab_base
        clone._parameters = {"weight": weight, "bias": bias}
        return plain(clone, x)

    return forward


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(6, 5), (6,)),
        (lambda: nn.Conv2d(3, 5, 3, padding=1), (3, 5, 5)),
        (lambda: nn.ConvTranspose2d(3, 5, 4, 2, 1), (3, 4, 4)),
        (lambda: nn.ConvTranspose2d(3, 4, 3, groups=1), (3, 4, 4)),
    ],
    ids=["linear", "conv", "conv_transpose", "conv_transpose_3x3"],
)
def test_gradient_penalty_and_partial_passes_match_the_formula(make, shape):
    """A gradient penalty (double backward) through a layer used twice, after a pass that
    asks only for ``g``'s gradient: every gradient equals autograd's through the formula."""
    torch.manual_seed(3)
    layer = nl.weight_norm(make(), dim=None)
    with torch.no_grad():
        layer.reparam.g.mul_(torch.rand_like(layer.reparam.g) + 0.5)
    v, g = layer.reparam.v, layer.reparam.g
    x1 = torch.randn(3, *shape, requires_grad=True)
    x2 = torch.randn(3, *shape)
    w = torch.randn(3, *layer(x2).shape[1:])

    def loss(f, x1):
        y1 = f(x1)
        (grad_x,) = torch.autograd.grad((y1 * w).sum(), x1, create_graph=True)
        return (y1 * w).sum() - 0.5 * f(x2).square().sum() + 3.0 * grad_x.square().sum()

    total = loss(layer, x1)
    # A pass that reaches g but not v, before the full backward (stale state must not leak).
    torch.autograd.grad(total, g, retain_graph=True)
    total.backward()
    v_ref = v.detach().clone().requires_grad_(True)
    g_ref = g.detach().clone().requires_grad_(True)
    x1_ref = x1.detach().clone().requires_grad_(True)
    loss(_explicit_wn_layer(layer, v_ref, g_ref), x1_ref).backward()
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v.grad, v_ref.grad, **tol)
    torch.testing.assert_close(g.grad, g_ref.grad, **tol)
    torch.testing.assert_close(x1.grad, x1_ref.grad, **tol)


def test_second_derivatives_in_the_weights_match_the_formula():
    """Differentiating the weight gradient itself (create_graph through the backward of the
    output-scaled layer): the norm's own dependence on ``v`` is kept."""
    torch.manual_seed(4)
    layer = nl.weight_norm(nn.ConvTranspose2d(3, 5, 4, 2, 1).double(), dim=None)
    v, g = layer.reparam.v, layer.reparam.g
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    def penalty(f, v, g):
        grad_v, grad_g = torch.autograd.grad(f(x).square().sum(), (v, g), create_graph=True)
        return grad_v.square().sum() + grad_g.square().sum()

    penalty(layer, v, g).backward()
    v_ref = v.detach().clone().requires_grad_(True)
    g_ref = g.detach().clone().requires_grad_(True)
    penalty(_explicit_wn_layer(layer, v_ref, g_ref), v_ref, g_ref).backward()
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g.grad, g_ref.grad, rtol=1e-4, atol=1e-5)


def test_apply_uses_dim_one_for_transposed_convs():
    model = nl.apply(nn.Sequential(nn.ConvTranspose2d(4, 6, 3), nn.Conv2d(6, 2, 3)), "wn")
    assert model[0].reparam.g.shape == (1, 6, 1, 1)
    assert model[1].reparam.g.shape == (2, 1, 1, 1)


@pytest.mark.parametrize("init_scale", [1.0, 0.3])
def test_data_init_standardizes_each_layer_in_forward_order(init_scale):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),
    )
    nl.apply(model, "wn")
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    nl.data_init(model, x, init_scale=init_scale)
    # Independent check: run the initialised model, capture each layer's output.
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o.detach()))
        for k, m in enumerate(model)
        if nl.is_reparametrized(m)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert sorted(outputs) == [0, 2, 5]
    for _k, out in outputs.items():
        per_unit = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.t()
        torch.testing.assert_close(
            per_unit.mean(1), torch.zeros(per_unit.shape[0]), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            per_unit.std(1, unbiased=False),
            torch.full((per_unit.shape[0],), init_scale),
            rtol=1e-3,
            atol=1e-4,
        )


def test_data_init_needs_weight_normalized_layers():
    with pytest.raises(ValueError, match="no weight-normalized layer"):
        nl.data_init(nn.Sequential(nn.Linear(2, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="init_scale"):
        nl.data_init(nl.apply(nn.Linear(2, 2), "wn"), torch.randn(4, 2), init_scale=0)


def test_bad_dim_is_refused_and_layer_unchanged():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="dim"):
        nl.weight_norm(layer, dim=2)
    assert type(layer) is nn.Linear


def test_the_output_follows_every_change_of_v():
    """An optimizer step, an in-place edit or ``load_state_dict`` each give the formula's
    output again."""
    torch.manual_seed(5)
    layer = nl.weight_norm(nn.ConvTranspose2d(3, 4, 4, 2, 1), dim=None)
    x = torch.randn(2, 3, 4, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)

    def expected():
        return _explicit_wn_layer(layer, layer.reparam.v.detach(), layer.reparam.g.detach())(x)

    with torch.no_grad():
        layer(x)
    layer(x).square().sum().backward()
    opt.step()
    torch.testing.assert_close(layer(x), expected())
    with torch.no_grad():
        layer.reparam.v.add_(torch.randn_like(layer.reparam.v))
    torch.testing.assert_close(layer(x), expected())
    other = nl.weight_norm(nn.ConvTranspose2d(3, 4, 4, 2, 1), dim=None)
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer(x), expected())
