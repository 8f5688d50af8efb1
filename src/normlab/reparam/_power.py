"""Matrix-vector products of a weight's two reshapes, without copying the weight.

A weight of shape ``(d0, d1, *kernel)`` is read as ``W3 = W.view(d0, d1, r)`` with
``r = prod(kernel)`` (a matrix is used as it is). Its two reshapes are

* rows along dim 0: ``M0 = W.reshape(d0, d1 * r)`` (Miyato's matrix for Linear/ConvNd), a view;
* rows along dim 1: ``M1 = W.movedim(1, 0).reshape(d1, d0 * r)`` (BSN's transposed reshape),
  which would be a copy; its products are batched matrix products of ``W3`` instead:
  ``M1 v = sum_a W3[a]^T-blocks @ V[a]`` and ``M1^T u = u @ W3``.

All are plain differentiable ops: autograd differentiates through them to any order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def as3d(weight: Tensor) -> Tensor:
    """``weight`` viewed as ``(d0, d1, r)``."""
    return weight.reshape(weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1, -1)


def mat_vec(w: Tensor, row_dim: int, v: Tensor) -> Tensor:
    """``M v`` for the reshape of weight ``w`` with rows along ``row_dim`` (``v`` flat)."""
    if w.dim() == 2:  # a matrix: M0 is w itself, M1 its transpose
        return (w if row_dim == 0 else w.t()).mv(v)
    if row_dim == 0:
        return w.flatten(1).mv(v)
    d0, d1, r = as3d(w).shape
    return torch.bmm(v.view(d0, 1, r), as3d(w).transpose(1, 2)).sum(0).view(d1)


def mat_t_vec(w: Tensor, row_dim: int, u: Tensor) -> Tensor:
    """``M^T u`` for the reshape of weight ``w`` with rows along ``row_dim`` (result flat)."""
    if w.dim() == 2:
        return (w.t() if row_dim == 0 else w).mv(u)
    if row_dim == 0:
        return w.flatten(1).t().mv(u)
    return torch.matmul(u, as3d(w)).flatten()


def normalize(x: Tensor, eps: float) -> Tensor:
    """``x / max(||x||, eps)`` for a flat vector."""
    return F.normalize(x, dim=0, eps=eps)


@torch.no_grad()
def normalize_into_(x: Tensor, out: Tensor, eps: float) -> Tensor:
    """``out <- x / max(||x||, eps)`` in place (three small ops), for the power vectors."""
    return torch.div(x, torch.linalg.vector_norm(x).clamp_min_(eps), out=out)


@torch.no_grad()
def power_step_(w: Tensor, row_dim: int, u: Tensor, v: Tensor, eps: float) -> None:
    """One step ``v <- N(M^T u)``, ``u <- N(M v)``, the buffers updated in place."""
    normalize_into_(mat_t_vec(w, row_dim, u), v, eps)
    normalize_into_(mat_vec(w, row_dim, v), u, eps)
