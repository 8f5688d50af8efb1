"""GAN losses on D's logits: hinge (the SNGAN/BSN default), non-saturating, WGAN-GP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss (without WGAN-GP's penalty, see ``gradient_penalty``)."""
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown loss {kind!r}; choose hinge, ns or wgan-gp")


def g_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss."""
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown loss {kind!r}; choose hinge, ns or wgan-gp")


def interpolation_weights(real: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One uniform weight per row of ``real``, broadcastable to it (WGAN-GP's interpolates)."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    return torch.rand(shape, generator=generator).to(real.device, real.dtype)


def gradient_penalty(
    D: nn.Module,
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
    *,
    alpha: Tensor | None = None,
) -> Tensor:
    """WGAN-GP's ``E[(||grad_x D(x_hat)|| - 1)^2]`` on interpolates ``alpha real + (1 - alpha)
    fake`` (``alpha`` drawn from ``generator`` when not given)."""
    if alpha is None:
        alpha = interpolation_weights(real, generator)
    x_hat = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    out = D(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.reshape(grad.shape[0], -1).norm(dim=1) - 1.0) ** 2).mean()
