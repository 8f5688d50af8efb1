"""``||grad_x D(x)||`` per sample: the slopes that Lin et al.'s BSN code logs every step."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def input_gradient_norm(D: nn.Module, x: Tensor) -> Tensor:
    """The norm of the gradient of ``D``'s output w.r.t. each input sample, shape ``(N,)``.

    ``D`` maps ``(N, ...)`` to ``(N,)`` or ``(N, 1)`` (one score per sample); the gradient
    of the sum of the scores w.r.t. ``x`` gives every sample's own gradient as long as
    ``D`` treats samples independently (no BatchNorm in training mode). ``D`` runs in the
    mode it is in (a training-mode SN layer takes its usual power step); parameter
    gradients (``.grad``) are not touched. The result is detached.

    Example::

        >>> slopes = nl.diagnostics.input_gradient_norm(D, real)   # (N,)
        >>> slopes.mean(), slopes.max()
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = D(xg)
        if out.dim() > 1:
            if out[0].numel() != 1:
                raise ValueError(
                    f"D must give one score per sample, got output shape {tuple(out.shape)}"
                )
            out = out.reshape(out.shape[0])
        if out.shape[0] != x.shape[0]:
            raise ValueError(f"D gave {out.shape[0]} scores for {x.shape[0]} samples")
        (grad,) = torch.autograd.grad(out.sum(), xg)
    return grad.detach().reshape(x.shape[0], -1).norm(dim=1)
