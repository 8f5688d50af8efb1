"""torch.compile (CPU inductor) and CPU autocast (bfloat16) under every method.

Compiling is slow on CPU (inductor generates C++ and runs g++: 10-15 s per small model on
an idle 2-core machine, 40-50 s for the first one in a fresh process, and 2-3x that while
other tests run), so each compile test builds *one* tiny model with a branch per method (a
conv, a LeakyReLU and a linear layer each), compiles it once, runs two GAN-like steps (two
forwards, one backward) and checks every branch against an eager copy: outputs, the
gradients of its raw tensors and its buffers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.reparam import is_reparametrized

STEPS = 2
SN_LIKE = ("sn", "ssn", "bsn", "bssn", "sn_exact")
OTHERS = tuple(m for m in nl.METHODS if m not in SN_LIKE)  # none, eqlr, wn


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.leaky_relu(self.conv(x), 0.1).flatten(1))


class PerMethod(nn.Module):
    """One branch per method, outputs concatenated: ``(N, len(methods))``."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({m: Branch() for m in methods})
        for method, branch in self.branches.items():
            nl.apply(branch, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches.values()], dim=1)


def _unconverge(model: nn.Module) -> None:
    """Random unit power vectors (as early in training): gradients then depend on them."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.rsplit(".", 1)[-1] in ("u0", "v0", "u1", "v1"):
                buf.copy_(F.normalize(torch.randn(buf.shape, generator=g), dim=0))


def _step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Two forwards (a GAN's real and fake batches) and one backward; returns the outputs."""
    out_real = model(x)
    out_fake = model(x.flip(0) * 0.5)
    (out_real.square().sum() - out_fake.sum()).backward()
    return out_real.detach()


def _compare_compiled(methods: tuple[str, ...]) -> None:
    """Compile a ``PerMethod`` model; check each branch against an eager copy, per method."""
    torch.manual_seed(0)
    eager = PerMethod(methods)
    with torch.no_grad():
        eager(torch.randn(4, 2, 4, 4))  # exact SN learns its input shape
    _unconverge(eager)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model)
    for i in range(STEPS):
        x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(_step(compiled, x), _step(eager, x), rtol=1e-5, atol=1e-6)
    failures = []
    for method in methods:
        prefix = f"branches.{method}."
        assert is_reparametrized(model.branches[method].conv) == (method != "none")
        pairs = [
            (name, a.grad, b.grad)
            for (name, a), (_, b) in zip(eager.named_parameters(), model.named_parameters())
            if name.startswith(prefix)
        ] + [
            (name, a, b)
            for (name, a), (_, b) in zip(eager.named_buffers(), model.named_buffers())
            if name.startswith(prefix)
        ]
        for name, a, b in pairs:
            assert a is not None and b is not None, name
            if not torch.allclose(b, a, rtol=1e-4, atol=1e-5):
                failures.append(f"{name}: max diff {(a - b).abs().max().item():.2e}")
    assert not failures, "compiled != eager: " + "; ".join(failures)


@pytest.mark.slow
def test_compile_matches_eager() -> None:
    """none, eqlr and wn: outputs, gradients and buffers match eager after two GAN steps."""
    _compare_compiled(OTHERS)


@pytest.mark.slow
def test_compile_matches_eager_sn_family() -> None:
    """sn, ssn, bsn, bssn, sn_exact: as above (one compiled model for the five)."""
    _compare_compiled(SN_LIKE)


# ------------------------------------------------------------------------ autocast bf16


def _sigmas(model: nn.Module) -> list[torch.Tensor]:
    return [
        s
        for m in model.modules()
        if is_reparametrized(m)
        for s in getattr(m.reparam, "last_sigmas", ())
    ]


@pytest.mark.parametrize("method", nl.METHODS)
def test_autocast_bf16(method: str) -> None:
    """Forward and backward run under CPU autocast; the reparameterization stays float32.

    The effective weights (and so the sigma estimates) are computed in float32 from the
    same state as without autocast: the estimates agree to float32 rounding, whereas a
    power iteration or a sigma in bfloat16 would be off by up to ~0.4%.
    """
    torch.manual_seed(0)
    model = Branch()
    nl.apply(model, method)
    x = torch.randn(4, 2, 4, 4)
    with torch.no_grad():
        model(x)
    ref = copy.deepcopy(model)
    # cached: reading .weight below shares the forward's power step (a read in training mode
    # outside it takes a step of its own, as PyTorch's parametrizations do).
    with torch.autocast("cpu", dtype=torch.bfloat16), nl.cached():
        y = model(x)
        assert y.dtype == torch.bfloat16
        for layer in (model.conv, model.head):
            assert layer.weight.dtype == torch.float32
        y.float().square().mean().backward()
    y_ref = ref(x)
    y_ref.square().mean().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
        # bf16 activations: the gradients agree in direction, to bf16 precision.
        cos = F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0, eps=1e-12)
        assert cos > 0.98 or q.grad.norm() < 1e-6, (name, cos)
    sig, sig_ref = _sigmas(model), _sigmas(ref)
    assert len(sig) == len(sig_ref)
    for s, r in zip(sig, sig_ref):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, r, rtol=1e-6, atol=0)
    torch.testing.assert_close(y.float(), y_ref.detach(), rtol=0.05, atol=0.05)
