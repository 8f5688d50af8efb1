"""The output-scaled forward (``c * A_W(x) + b``) against the weight-scaled one (``A_{cW}(x) + b``).

The reference is the layer class's own ``forward`` reading ``layer.weight``, the effective
weight computed by the method's formula: outputs, gradients, Hessian-vector products, power
steps and ``nl.cached()`` sharing must agree, in float64, to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.reparam._output_scaling import _output_numel

SCALED = ["sn", "ssn", "bsn", "bssn", "sn_exact", "eqlr"]

# (id, layer, input) with fewer output elements than weight elements: the fast path's case.
CASES = [
    ("linear", lambda: nn.Linear(24, 10), (2, 24)),
    ("linear_3d_input", lambda: nn.Linear(16, 12), (2, 3, 16)),
    ("linear_no_bias", lambda: nn.Linear(20, 9, bias=False), (3, 20)),
    ("conv2d", lambda: nn.Conv2d(8, 12, 3, padding=1), (2, 8, 3, 3)),
    ("conv2d_s2", lambda: nn.Conv2d(6, 8, 4, stride=2, padding=1), (1, 6, 4, 4)),
    ("conv2d_same", lambda: nn.Conv2d(6, 8, 3, padding="same", bias=False), (1, 6, 3, 3)),
    ("conv2d_grouped", lambda: nn.Conv2d(8, 12, 3, groups=2, dilation=2), (1, 8, 6, 6)),
    ("conv2d_unbatched", lambda: nn.Conv2d(8, 10, 3), (8, 4, 4)),
    ("conv1d", lambda: nn.Conv1d(8, 10, 5, padding=2), (2, 8, 4)),
    ("conv3d", lambda: nn.Conv3d(4, 6, 2), (1, 4, 2, 3, 3)),
    ("convT2d", lambda: nn.ConvTranspose2d(12, 8, 3), (1, 12, 1, 1)),
    ("convT2d_s2", lambda: nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1), (1, 16, 1, 2)),
    (
        "convT2d_grouped",
        lambda: nn.ConvTranspose2d(12, 8, 3, groups=2, stride=2, output_padding=1),
        (1, 12, 1, 1),
    ),
]
_FAST_OPS = ("AddcmulBackward", "MulBackward", "AddBackward")


def _setup(method: str, make, shape, training: bool):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    nl.apply(layer, method)
    layer(x)  # exact SN: sees its input shape
    with torch.no_grad():  # off the initialisation (eqlr's zero bias, wn's g = ||v||)
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layer.train(training)
    return layer, x


def _reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer class's own forward: it reads ``layer.weight``, the weight-scaled side."""
    return type(layer)._normlab_base.forward(layer, x)


def _took_fast_path(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__.startswith(_FAST_OPS)


@pytest.mark.parametrize("method", SCALED)
@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=[c[0] for c in CASES])
def test_output_gradient_and_hvp_equal_the_weight_scaled_layer(method, name, make, shape):
    layer, x = _setup(method, make, shape, training=False)
    x.requires_grad_(True)
    params = [x, *layer.parameters()]
    r = torch.randn_like(_reference(layer, x))
    directions = [torch.randn_like(p) for p in params]

    def grads_and_hvp(forward):
        out = forward(layer, x)
        grads = torch.autograd.grad((torch.tanh(out) * r).sum(), params, create_graph=True)
        dot = sum((g * d).sum() for g, d in zip(grads, directions))
        hvp = torch.autograd.grad(dot, params, allow_unused=True)
        return out, grads, hvp

    out, grads, hvp = grads_and_hvp(lambda m, t: m(t))
    ref_out, ref_grads, ref_hvp = grads_and_hvp(_reference)
    assert _took_fast_path(out)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    for h, ref in zip(hvp, ref_hvp):
        if ref is None:
            assert h is None or torch.count_nonzero(h) == 0
        else:
            torch.testing.assert_close(h, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", ["sn", "bssn", "sn_exact"])
@pytest.mark.parametrize("name", ["linear", "conv2d", "convT2d_s2"])
def test_training_forward_takes_the_same_power_step(method, name):
    make, shape = next((m, s) for n, m, s in CASES if n == name)
    fast, x = _setup(method, make, shape, training=True)
    plain = copy.deepcopy(fast)
    for _ in range(3):  # each forward takes one step, on either side
        out, ref = fast(x), _reference(plain, x)
        assert _took_fast_path(out)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for (key, value), (_, ref) in zip(fast.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12, msg=key)

    # Inside nl.cached(): one step for both calls, and both calls give the same output.
    def vector(layer):  # u0, or exact SN's v
        return next(iter(layer.reparam.buffers()))

    before = vector(fast).clone()
    with nl.cached():
        a, b = fast(x), fast(x)
        ref = _reference(plain, x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-12)
    assert not torch.equal(before, vector(fast))  # the step was taken (once: as plain's)
    torch.testing.assert_close(vector(fast), vector(plain), rtol=1e-12, atol=1e-12)


def test_writes_to_the_raw_weight_are_seen_by_the_next_fast_forward():
    layer, x = _setup("sn", CASES[0][1], CASES[0][2], training=False)
    layer(x)
    with torch.no_grad():
        layer.reparam.raw_weight.data.mul_(-0.5)  # sigma scales with W: W_eff flips sign
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)
    layer.reparam.scale = 3.0
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


def test_the_layer_forward_runs_where_the_rewrite_does_not_apply():
    layer, x = _setup("sn", CASES[0][1], CASES[0][2], training=False)
    assert _took_fast_path(layer(x))
    big = torch.randn(50, 24, dtype=torch.float64)  # output larger than the weight
    assert type(layer(big).grad_fn).__name__.startswith("AddmmBackward")
    handle = layer.reparam.add_weight_grad_hook(lambda g: None)  # an instrument's hook
    assert not _took_fast_path(layer(x))
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _took_fast_path(layer(x.float().double()))
    wn, _ = _setup("wn", CASES[0][1], CASES[0][2], training=False)
    assert not _took_fast_path(wn(x))  # wn always scales its weight
    convt, y = _setup("sn", CASES[10][1], CASES[10][2], training=False)
    out = convt(y, output_size=[3, 3])  # extra arguments: the layer's own forward
    assert type(out.grad_fn).__name__.startswith("ConvolutionBackward")
    torch.testing.assert_close(out, _reference(convt, y), rtol=1e-12, atol=1e-12)

    with pytest.raises(RuntimeError):  # an ill-shaped input: the layer's own error
        layer(torch.randn(2, 23, dtype=torch.float64))
    assert layer(torch.randn(0, 24, dtype=torch.float64)).shape == (0, 10)

    class Custom(nn.Linear):  # a subclass may override forward: left alone
        def forward(self, x):
            return F.linear(x, self.weight, self.bias) * 2

    custom = nl.apply(Custom(24, 10).double(), "sn").eval()
    torch.testing.assert_close(custom(x), 2 * F.linear(x, custom.weight, custom.bias))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(5, 3), (7, 2, 5)),
        (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2), (2, 3, 9, 8)),
        (lambda: nn.Conv2d(3, 4, 3, padding="same"), (3, 7, 6)),
        (lambda: nn.Conv2d(3, 4, (3, 2), padding="valid"), (1, 3, 7, 6)),
        (lambda: nn.Conv1d(3, 4, 4, stride=3), (2, 3, 17)),
        (lambda: nn.Conv3d(2, 4, 2, stride=(1, 2, 1)), (1, 2, 5, 6, 3)),
        (lambda: nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, output_padding=1), (2, 3, 5, 4)),
        (lambda: nn.ConvTranspose1d(3, 6, 3, stride=3, dilation=2, groups=3), (3, 5)),
    ],
)
def test_output_size_formula_matches_the_layer(make, shape):
    layer = make()
    x = torch.randn(shape)
    assert _output_numel(layer, x) == layer(x).numel()
