"""``max_stable_lr``: the largest stable learning rate from the Fisher's top eigenvalue.

Wei, Stokes & Schwab (mean-field BatchNorm, arXiv 1903.02606): gradient descent with
heavy-ball momentum ``mu`` is stable on a quadratic with curvature ``lambda`` iff
``lr < 2 (1 + mu) / lambda``; near a minimum the loss's curvature is the Fisher
information, which for squared-error and cross-entropy losses equals the generalized
Gauss-Newton matrix ``G = J^T H J`` (``J``: Jacobian of the outputs w.r.t. the
parameters, ``H``: Hessian of the loss w.r.t. the outputs). ``G v`` is computed without
forming any matrix: ``J v`` by the double-backward trick, ``H (J v)`` by a
Hessian-vector product on the outputs, ``J^T (.)`` by one backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _call(model: nn.Module, inputs: Any) -> Tensor:
    return model(*inputs) if isinstance(inputs, tuple | list) else model(inputs)


def ggn_vector_product(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    inputs: Any,
    targets: Any,
    vec: list[Tensor],
    params: list[Tensor],
) -> list[Tensor]:
    """``J^T H J vec`` on one batch, for the mean loss ``loss_fn(model(inputs), targets)``."""
    with torch.enable_grad():
        out = _call(model, inputs)
        # J v by double backward: g(u) = J^T u is linear in u, so d<g(u), v>/du = J v.
        dummy = torch.zeros_like(out, requires_grad=True)
        jt_u = torch.autograd.grad(out, params, dummy, create_graph=True, allow_unused=True)
        pairs = [(g, v) for g, v in zip(jt_u, vec) if g is not None]
        (jv,) = torch.autograd.grad([g for g, _ in pairs], dummy, [v for _, v in pairs])
        # H (J v): Hessian of the loss w.r.t. the outputs, at the outputs.
        o = out.detach().requires_grad_(True)
        (dl,) = torch.autograd.grad(loss_fn(o, targets), o, create_graph=True)
        hjv = None
        if dl.requires_grad:
            (hjv,) = torch.autograd.grad(dl, o, jv, allow_unused=True)
        if hjv is None:  # the loss is linear in the outputs
            hjv = torch.zeros_like(o)
        res = torch.autograd.grad(out, params, hjv.detach(), allow_unused=True)
    return [torch.zeros_like(p) if r is None else r.detach() for r, p in zip(res, params)]


def max_stable_lr(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    data: Iterable[tuple[Any, Any]],
    momentum: float = 0.9,
    *,
    n_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[float, float]:
    """Estimate ``lambda_max`` of the Fisher (as the Gauss-Newton matrix) and the stable rate.

    Args:
        model: the network; its parameters that require grad span the matrix.
        loss_fn: ``loss_fn(outputs, targets)``, the *mean* loss over a batch.
        data: an iterable of ``(inputs, targets)`` batches (a list, or a DataLoader that
            can be iterated more than once); ``G`` is averaged over them, weighted by batch
            size. Batches are moved to the model's device.
        momentum: the heavy-ball momentum ``mu`` of the optimizer (0 for plain GD).
        n_iter: most power-iteration steps; stops when ``lambda`` changes by < ``tol``
            (relative).

    Returns:
        ``(lr, lambda_max)`` with ``lr = 2 (1 + momentum) / lambda_max``.

    The model runs in its current mode (BatchNorm in training mode uses batch statistics,
    as in training); its buffers are restored afterwards and ``.grad`` is not touched.

    Example::

        >>> lr, lam = nl.diagnostics.max_stable_lr(net, F.cross_entropy, [(x, y)], momentum=0.9)
    """
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad")
    device = params[0].device
    batches = [(_to_device(x, device), _to_device(y, device)) for x, y in data]
    if not batches:
        raise ValueError("data gave no batch")
    sizes = []
    for x, _ in batches:
        first = x[0] if isinstance(x, tuple | list) else x
        sizes.append(first.shape[0] if isinstance(first, Tensor) and first.dim() else 1)
    total = float(sum(sizes))
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    vec = [torch.randn(p.shape, generator=gen).to(device=device, dtype=p.dtype) for p in params]
    lam = math.nan
    try:
        norm = torch.sqrt(sum((v * v).sum() for v in vec))
        vec = [v / norm for v in vec]
        for _ in range(n_iter):
            gv = [torch.zeros_like(p) for p in params]
            for (x, y), n in zip(batches, sizes):
                part = ggn_vector_product(model, loss_fn, x, y, vec, params)
                for acc, g in zip(gv, part):
                    acc.add_(g, alpha=n / total)
            new_lam = float(sum((a * b).sum() for a, b in zip(vec, gv)))
            norm = float(torch.sqrt(sum((g * g).sum() for g in gv)))
            if not math.isfinite(norm) or norm == 0.0:
                lam = new_lam
                break
            vec = [g / norm for g in gv]
            done = math.isfinite(lam) and abs(new_lam - lam) <= tol * abs(new_lam)
            lam = new_lam
            if done:
                break
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and b.shape == saved[n].shape:
                    b.copy_(saved[n])
    if not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"the Gauss-Newton matrix has no positive eigenvalue (got {lam})")
    return 2.0 * (1.0 + momentum) / lam, lam
