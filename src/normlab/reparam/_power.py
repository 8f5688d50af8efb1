"""The power-iteration engine of the spectral-norm family, without copies of the weight.

A weight of shape ``(d0, d1, *kernel)`` is read as ``W3 = W.view(d0, d1, r)`` with
``r = prod(kernel)``. Its two reshapes are

* row dim 0: ``M0 = W.reshape(d0, d1 * r)`` (Miyato's matrix for Linear/ConvNd), a view;
* row dim 1: ``M1 = W.movedim(1, 0).reshape(d1, d0 * r)`` (BSN's transposed reshape),
  which would be a copy: its products are computed from ``W3`` by batched matrix
  products instead, ``M1 v = sum_a W3[a] @ V[a]`` and ``M1^T u = u @ W3``.

``normalize_weight`` returns ``scale * W / sigma`` (``sigma`` the mean of the given
reshapes' singular values) through a custom autograd function whose backward is the
closed form::

    dL/dW = (scale / sigma) * (G - <G, W> / sigma * dsigma/dW),
    dsigma/dW = mean_i  u_i v_i^T   (each in its reshape's layout)

with ``u_i, v_i`` the power vectors (constants of the step, as in Miyato et al.). The
rank-one terms are added in place, so a backward costs three passes over the weight
instead of the six or more that autograd takes through ``u^T W v``.

These backwards are exact to first order, which covers gradient penalties on the input
(WGAN-GP, R1: their second pass is a first-order backward here). Differentiating the
weight's gradient itself again (``create_graph`` through this backward) treats ``sigma``
as a constant, so such third-order uses miss the terms through ``sigma``.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn


def as3d(weight: Tensor) -> Tensor:
    """``weight`` viewed as ``(d0, d1, r)``."""
    return weight.reshape(weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1, -1)


def mat_vec(w3: Tensor, row_dim: int, v: Tensor) -> Tensor:
    """``M v`` for the reshape with rows along ``row_dim`` (``v`` flat, length ``cols``)."""
    d0, d1, r = w3.shape
    if row_dim == 0:
        return w3.reshape(d0, d1 * r).mv(v)
    if r == 1:  # M1 is the transpose of a (d0, d1) matrix: a transposed view
        return w3.view(d0, d1).t().mv(v)
    # Row vectors times the transposed blocks: BLAS reads W3[a]^T in place (1.5x faster
    # than W3[a] @ V[a] as a column, on 3x3 and 4x4 kernels).
    return torch.bmm(v.view(d0, 1, r), w3.transpose(1, 2)).sum(0).view(d1)


def mat_t_vec(w3: Tensor, row_dim: int, u: Tensor) -> Tensor:
    """``M^T u`` for the reshape with rows along ``row_dim`` (result flat)."""
    d0, d1, r = w3.shape
    if row_dim == 0:
        return w3.reshape(d0, d1 * r).t().mv(u)
    if r == 1:
        return w3.view(d0, d1).mv(u)
    return torch.matmul(u, w3).reshape(d0 * r)


def add_outer_(grad3: Tensor, row_dim: int, u: Tensor, v: Tensor, alpha: float = 1.0) -> None:
    """``grad += alpha * u v^T`` laid out as the reshape with rows along ``row_dim``, in place."""
    d0, d1, r = grad3.shape
    if row_dim == 0:
        grad3.view(d0, d1 * r).addr_(u, v, alpha=alpha)
    elif r == 1:
        grad3.view(d0, d1).addr_(v, u, alpha=alpha)
    elif r < 16:  # a broadcast product beats batched rank-one GEMMs with short rows (3x3: 2x)
        grad3.addcmul_(u.view(1, d1, 1), v.view(d0, 1, r), value=alpha)
    else:
        grad3.baddbmm_(u.view(1, d1, 1).expand(d0, d1, 1), v.view(d0, 1, r), alpha=alpha)


#: From this many weight entries, BSN's two rank-one terms on a kernel of 2 to 15 taps go in
#: as one GEMM (3x3 kernels: 1.7x faster on 256x128 and 512x256 weights, slower below).
BOTH_OUTERS_MIN_NUMEL = 1 << 18


def add_both_outers_(
    grad3: Tensor, u0: Tensor, v0: Tensor, u1: Tensor, v1: Tensor, alpha: float = 1.0
) -> None:
    """``grad += alpha * (u0 v0^T`` (rows along dim 0) ``+ u1 v1^T)`` (rows along dim 1), one GEMM.

    In the layout ``(d0, d1 * r)`` the second term is ``V1 @ E`` with ``V1 = v1.view(d0, r)``
    and ``E[c, (b, c')] = u1[b] * delta(c, c')``, so both are ``[V1 | u0] @ [E ; v0^T]``.
    """
    d0, d1, r = grad3.shape
    left = torch.cat([v1.view(d0, r), u0.view(d0, 1)], dim=1)
    taps = torch.eye(r, dtype=grad3.dtype, device=grad3.device).view(r, 1, r)
    right = torch.cat([(taps * u1.view(1, d1, 1)).view(r, d1 * r), v0.view(1, d1 * r)], dim=0)
    grad3.view(d0, d1 * r).addmm_(left, right, alpha=alpha)


def scaled_plus_outer(
    g: Tensor, row_dim: int, u: Tensor, v: Tensor, beta: float, alpha: float
) -> Tensor:
    """``beta * g + alpha * u v^T`` (in the reshape with rows along ``row_dim``), one pass."""
    d0, d1, r = as3d(g).shape
    if row_dim == 0:
        out = torch.addr(g.reshape(d0, d1 * r), u, v, beta=beta, alpha=alpha)
    else:
        out = torch.baddbmm(
            as3d(g), u.view(1, d1, 1).expand(d0, d1, 1), v.view(d0, 1, r), beta=beta, alpha=alpha
        )
    return out.view(g.shape)


def power_step_(
    w3: Tensor, row_dim: int, u: Tensor, v: Tensor, eps: float, mt_u: Tensor | None = None
) -> Tensor:
    """One step ``v <- N(M^T u)``, ``u <- N(M v)`` in place; returns ``sigma = ||M v||``.

    ``mt_u``, if given, is ``M^T u`` already computed for this ``M`` and ``u`` (by
    ``sigma_of``), which saves the step's first pass over the weight.
    """
    d0, d1, r = w3.shape
    # Miyato's reshape: the products go straight into the buffers (no temporaries to copy).
    fast = row_dim == 0 and u.is_contiguous() and v.is_contiguous()
    m = w3.reshape(d0, d1 * r) if fast else None
    if mt_u is not None:
        v.copy_(mt_u)
    elif fast:
        torch.mv(m.t(), u, out=v)
    else:
        v.copy_(mat_t_vec(w3, row_dim, u))
    v.div_(torch.linalg.vector_norm(v).clamp_min_(eps))
    if fast:
        torch.mv(m, v, out=u)
    else:
        u.copy_(mat_vec(w3, row_dim, v))
    sigma = torch.linalg.vector_norm(u)
    u.div_(sigma.clamp_min(eps))
    return sigma


def sigma_of(w3: Tensor, row_dim: int, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(u^T M v, M^T u or None)`` (no power step).

    With rows along dim 1 (and a kernel) sigma is computed as ``(M^T u) . v`` (``u @ W3``
    beats the transposed ``M v``), and ``M^T u`` is returned: the next power step on the
    same ``M`` and ``u`` (a GAN's D step after G's step through D in eval) can start
    from it. With rows along dim 0 it stays ``u . (M v)``, the rounding this sigma has
    always had: changing it moved a 2-rank WGAN-GP run's distance to the 1-process run
    (its trajectory amplifies rounding) from 4e-6 to 8e-5, past the DDP test's tolerance.
    """
    if row_dim == 1 and w3.shape[2] > 1:
        mt_u = mat_t_vec(w3, row_dim, u)
        return torch.dot(mt_u, v), mt_u
    return torch.dot(u, mat_vec(w3, row_dim, v)), None


class _Normalize(torch.autograd.Function):
    """``scale * W / sigma`` with the closed-form backward described in the module doc."""

    @staticmethod
    def forward(ctx, weight, sigma, scale, row_dims, vectors, owner):
        coef = scale / sigma
        ctx.save_for_backward(weight, sigma, *vectors)
        ctx.scale = scale
        ctx.row_dims = row_dims
        ctx.owner = owner
        return weight * coef

    @staticmethod
    def backward(ctx, grad_out):
        _backward_done(ctx.owner)
        weight, sigma, *vectors = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        inner = torch.dot(grad_out.reshape(-1), weight.reshape(-1))
        n = len(ctx.row_dims)
        pairs = [(vectors[2 * i], vectors[2 * i + 1]) for i in range(n)]
        if grad_out.device.type == "cpu" and not torch.is_grad_enabled():
            # Scalars as floats (free on the CPU), and one fused pass ``coef * G + alpha u v^T``.
            sigma_f = float(sigma)
            coef = ctx.scale / sigma_f
            alpha = -coef * float(inner) / sigma_f / n
            (u, v), row_dim = pairs[0], ctx.row_dims[0]
            grad = scaled_plus_outer(grad_out, row_dim, u, v, coef, alpha)
            for (u, v), row_dim in zip(pairs[1:], ctx.row_dims[1:]):
                add_outer_(as3d(grad), row_dim, u, v, alpha=alpha)
            return grad, None, None, None, None, None
        # On GPUs the scalars stay on the device (no sync); under create_graph they are recorded.
        coef = ctx.scale / sigma
        alpha = -(coef * inner / sigma) / n
        grad = grad_out * coef
        for (u, v), row_dim in zip(pairs, ctx.row_dims):
            add_outer_(as3d(grad), row_dim, u * alpha, v)
        return grad, None, None, None, None, None


def _backward_done(owner: weakref.ref | None) -> None:
    """Tell the reparameterization that a backward went through its computed weight."""
    module = None if owner is None else owner()
    if module is not None:
        module._invalidate()


def normalize_weight(
    weight: Tensor,
    sigma: Tensor,
    scale: float,
    row_dims: tuple[int, ...],
    vectors: list[Tensor],
    owner: nn.Module | None = None,
) -> Tensor:
    """``scale * weight / sigma``; ``vectors = [u0, v0, u1, v1, ...]``, one pair per reshape.

    ``sigma`` must be the mean of ``u_i^T M_i v_i`` (detached); the vectors are cloned
    here, since the buffers they come from change in place at the next forward.
    ``owner``'s ``_invalidate()`` is called when a backward goes through the result.
    """
    vectors, ref = _for_backward(vectors, owner)
    return _Normalize.apply(weight, sigma.detach(), scale, row_dims, vectors, ref)


def _for_backward(
    vectors: list[Tensor], owner: nn.Module | None
) -> tuple[list[Tensor], weakref.ref | None]:
    """Copies of the power vectors (their buffers change in place at the next forward) and a
    weak reference to ``owner`` (no cycle through the graph), as the backwards need them."""
    return [t.clone() for t in vectors], None if owner is None else weakref.ref(owner)


class _Tie(torch.autograd.Function):
    """``W`` itself (a view), for ``y = map(x, W) * scale / sigma``: adds the path through sigma.

    With ``coef = scale / sigma`` a constant of autograd, the gradient reaching ``W`` through
    the layer is ``G = coef * dL/dW_eff``; the part through ``sigma`` is then
    ``-<G, W> / sigma * dsigma/dW`` (``<dL/dcoef, coef> = <G, W>``, as the map is linear
    in ``W``), so the backward is ``G - <G, W> / sigma * mean_i u_i v_i^T``: one dot and one
    fused pass, with no copy of the weight in the forward.
    """

    @staticmethod
    def forward(ctx, weight, sigma, row_dims, vectors, owner):
        ctx.save_for_backward(weight, sigma, *vectors)
        ctx.row_dims = row_dims
        ctx.owner = owner
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_out):
        _backward_done(ctx.owner)
        weight, sigma, *vectors = ctx.saved_tensors
        # The incoming gradient is autograd's own buffer (the layer's weight gradient; the
        # only hooks on ``tied`` read it and copy), so the rank-one terms go in in place:
        # in-place passes over fresh memory cost about half as much on the CPU.
        grad = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        inner = torch.dot(grad.reshape(-1), weight.reshape(-1))
        if grad.device.type == "cpu" and not torch.is_grad_enabled():
            # The scalar as a float (free on the CPU): three fewer small ops per layer.
            alpha, scale = -float(inner) / float(sigma) / len(ctx.row_dims), None
        else:  # a tensor: no device sync; under create_graph it is recorded
            alpha, scale = 1.0, -(inner / sigma) / len(ctx.row_dims)
        grad3 = as3d(grad)
        terms = {
            row: (vectors[2 * i] if scale is None else vectors[2 * i] * scale, vectors[2 * i + 1])
            for i, row in enumerate(ctx.row_dims)
        }
        if len(terms) == 2 and 1 < grad3.shape[2] < 16 and grad.numel() >= BOTH_OUTERS_MIN_NUMEL:
            add_both_outers_(grad3, *terms[0], *terms[1], alpha=alpha)
        else:
            for row_dim, (u, v) in terms.items():
                add_outer_(grad3, row_dim, u, v, alpha=alpha)
        return grad, None, None, None, None


def tie_weight(
    weight: Tensor,
    sigma: Tensor,
    row_dims: tuple[int, ...],
    vectors: list[Tensor],
    owner: nn.Module | None = None,
) -> Tensor:
    """``weight`` for ``map(x, weight) * scale / sigma``; arguments as ``normalize_weight``."""
    vectors, ref = _for_backward(vectors, owner)
    return _Tie.apply(weight, sigma.detach(), row_dims, vectors, ref)
