"""One GAN update, one place: the D-step and G-step losses every loop in normlab uses.

The lab's trainer and the ``diagnose`` experiment both build their updates from these two
functions, so "one power step per D update" means the same thing everywhere:

* ``d_step_loss`` runs D *once*, in training mode, on the real and the fake batch
  concatenated: each SN-family layer takes exactly one power-iteration step per D update,
  from both batches' shared forward (the BSN reference code's one step per update).
  WGAN-GP's penalty runs D again in eval mode (vectors frozen, no second step).
* ``g_step_loss`` runs D frozen (no gradients to its tensors) and in eval mode (no power
  step): the generator's update never moves D's estimates.

Example::

    fake = G(z).detach()
    opt_d.zero_grad(); d_step_loss(D, D, real, fake, "hinge").loss.backward(); opt_d.step()
    opt_g.zero_grad(); g_step_loss(G, D, D, z2, "hinge").backward(); opt_g.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.gan import losses


@dataclass
class DStep:
    """The D update's loss and D's logits on the real and the fake rows."""

    loss: Tensor
    real_logits: Tensor
    fake_logits: Tensor


@contextlib.contextmanager
def frozen_eval(D: nn.Module) -> Iterator[nn.Module]:
    """``D`` in eval mode with no gradient to its tensors for the block, then as it was."""
    was_training = D.training
    grads = [p.requires_grad for p in D.parameters()]
    D.eval()
    D.requires_grad_(False)
    try:
        yield D
    finally:
        for p, g in zip(D.parameters(), grads):
            p.requires_grad_(g)
        D.train(was_training)


@contextlib.contextmanager
def eval_mode(D: nn.Module) -> Iterator[nn.Module]:
    """``D`` in eval mode (power vectors frozen) for the block, then as it was."""
    was_training = D.training
    D.eval()
    try:
        yield D
    finally:
        D.train(was_training)


def d_step_loss(
    d_train: Callable[[Tensor], Tensor],
    D: nn.Module,
    real: Tensor,
    fake: Tensor,
    loss: str,
    *,
    amp: contextlib.AbstractContextManager | None = None,
    gp_weight: float = 10.0,
    gp_interpolation: Callable[[Tensor], Tensor] | None = None,
) -> DStep:
    """The discriminator's loss on ``real`` and ``fake`` (no gradient to G).

    ``d_train`` is what trains (``D`` itself, or its DDP / compiled wrapper), run once on
    both batches concatenated under ``amp``; ``D`` is the plain module, which the WGAN-GP
    penalty runs in eval mode, in float32. ``gp_interpolation(real)`` draws the penalty's
    interpolation weights (default: ``torch.rand`` per row).
    """
    fake = fake.detach().to(real.dtype)
    with amp if amp is not None else contextlib.nullcontext():
        logits = d_train(torch.cat([real, fake])).float()
    real_logits, fake_logits = logits[: real.shape[0]], logits[real.shape[0] :]
    value = losses.d_loss(loss, real_logits, fake_logits)
    if loss == "wgan-gp":
        with eval_mode(D):
            value = value + gp_weight * losses.gradient_penalty(
                D, real, fake, alpha=None if gp_interpolation is None else gp_interpolation(real)
            )
    return DStep(value, real_logits, fake_logits)


def g_step_loss(
    g_train: Callable[[Tensor], Tensor],
    d_judge: Callable[[Tensor], Tensor],
    D: nn.Module,
    z: Tensor,
    loss: str,
    *,
    amp: contextlib.AbstractContextManager | None = None,
) -> Tensor:
    """The generator's loss on fakes of ``z``, judged by ``d_judge`` (``D`` or its compiled
    form) with ``D`` frozen and in eval mode."""
    with frozen_eval(D), amp if amp is not None else contextlib.nullcontext():
        out = d_judge(g_train(z)).float()
    return losses.g_loss(loss, out)
