"""Exact derivatives of every order, against central finite differences in float64.

For every method on every layer kind, in eval mode (the power vectors frozen, so the
layer's output is an exact function of its raw tensors):

* the gradient of a smooth loss with respect to all raw tensors;
* Hessian-vector products (double backward) in random directions;
* the gradient of a gradient penalty (WGAN-GP's ``(||grad_x D|| - 1)^2``, R1's
  ``||grad_x D||^2``) with respect to the raw tensors;

and ``torch.func`` (``grad``, ``vmap`` over a batch of inputs) on a normalized layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab as nl
from tests.reparam._layers import layer_cases, sample_input

METHODS = [m for m in nl.METHODS if m != "none"]
CASES = layer_cases()
STEP = 1e-6


def setup(method: str, make, shape):
    torch.manual_seed(0)
    layer = make().double()
    x = sample_input(layer, shape, batch=3)
    if x.is_floating_point():
        x = x.double()
    nl.apply(layer, method)
    layer(x)  # exact SN: sees its input shape
    layer.eval()
    with torch.no_grad():  # move off the initialisation (eqlr's zero bias, wn's g = ||v||)
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = [p for p in layer.parameters()]
    r = torch.randn_like(layer(x))
    return layer, x, params, r


def loss_of(layer, x, r):
    return (torch.tanh(layer(x)) * r).sum()


def flat_grad(fn, params, create_graph=False):
    grads = torch.autograd.grad(fn(), params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def shifted(params, direction, h):
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)


def central_difference(fn, params, direction):
    """``(fn(p + h d) - fn(p - h d)) / 2h``, ``fn`` returning a tensor or list of tensors."""
    shifted(params, direction, STEP)
    plus = fn()
    shifted(params, direction, -2 * STEP)
    minus = fn()
    shifted(params, direction, STEP)
    if isinstance(plus, list):
        return [(a - b) / (2 * STEP) for a, b in zip(plus, minus)]
    return (plus - minus) / (2 * STEP)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=[c[0] for c in CASES]
)
def test_gradient_and_hessian_vector_products_match_finite_differences(
    method, name, make, fan_in, out_dim, shape
):
    layer, x, params, r = setup(method, make, shape)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        grads = flat_grad(lambda: loss_of(layer, x, r), params)
        directional = sum((g * d).sum() for g, d in zip(grads, direction))
        fd = central_difference(lambda: loss_of(layer, x, r).detach(), params, direction)
        torch.testing.assert_close(directional, fd, rtol=1e-6, atol=1e-8)
        # Hessian-vector product: d/dt grad(p + t d) by double backward and by differences.
        g = flat_grad(lambda: loss_of(layer, x, r), params, create_graph=True)
        gd = sum((gi * d).sum() for gi, d in zip(g, direction))
        hvp = torch.autograd.grad(gd, params, allow_unused=True)
        hvp = [torch.zeros_like(p) if h is None else h for p, h in zip(params, hvp)]
        fd_hvp = central_difference(
            lambda: [t.detach() for t in flat_grad(lambda: loss_of(layer, x, r), params)],
            params,
            direction,
        )
        for p_name_i, (a, b) in enumerate(zip(hvp, fd_hvp)):
            scale = b.abs().max().item() + 1e-6
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=str(p_name_i))


PENALTY_CASES = [c for c in CASES if c[0] in ("linear", "conv2d_s2", "convT2d", "conv1d")]


@pytest.mark.parametrize("penalty", ["wgan-gp", "r1"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), PENALTY_CASES, ids=[c[0] for c in PENALTY_CASES]
)
def test_gradient_penalties_differentiate_exactly(
    penalty, method, name, make, fan_in, out_dim, shape
):
    layer, x, params, _ = setup(method, make, shape)
    head = torch.randn_like(layer(x)[0])

    def critic(inp):
        return (torch.tanh(layer(inp)) * head).flatten(1).sum(1)

    def value():
        xi = x.detach().clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(critic(xi).sum(), xi, create_graph=True)
        norm = gx.flatten(1).norm(dim=1)
        return ((norm - 1) ** 2).mean() if penalty == "wgan-gp" else norm.square().mean()

    grads = flat_grad(value, params)
    direction = [torch.randn_like(p) for p in params]
    directional = sum((g * d).sum() for g, d in zip(grads, direction))
    fd = central_difference(lambda: value().detach(), params, direction)
    torch.testing.assert_close(directional, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_torch_func_grad_and_vmap_on_a_normalized_layer(method):
    torch.manual_seed(2)
    layer = nl.apply(nn.Conv2d(3, 4, 3, padding=1), method)
    x = torch.randn(5, 3, 6, 6)
    layer(x)
    layer.eval()
    params = dict(layer.named_parameters())
    buffers = dict(layer.named_buffers())

    def loss(p, inp):
        return torch.func.functional_call(layer, (p, buffers), (inp,)).square().sum()

    grads = torch.func.grad(loss)(params, x)
    expected = torch.autograd.grad(layer(x).square().sum(), list(params.values()))
    for (key, g), e in zip(grads.items(), expected):
        torch.testing.assert_close(g, e, msg=key)
    per_sample = torch.func.vmap(lambda xi: layer(xi.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(per_sample, layer(x))
    # Per-sample gradients: vmap of grad over the batch.
    per_grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
    for key, g in per_grads.items():
        torch.testing.assert_close(g.sum(0), grads[key], rtol=1e-4, atol=1e-5, msg=key)
