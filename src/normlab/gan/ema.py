"""Exponential moving average of a generator's weights (for evaluation and samples)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A copy of ``model`` whose parameters follow ``ema <- decay * ema + (1 - decay) * current``.

    Parameters are the raw trainable tensors (a reparameterized layer's effective weight is
    computed from the averaged raw ones); buffers (BatchNorm statistics, power vectors) are
    copied from the live model at every update.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bind(model)

    def bind(self, model: nn.Module) -> None:
        """Follow ``model`` (same architecture as the copy)."""
        params = dict(model.named_parameters())
        self._pairs = [(p, params[n]) for n, p in self.model.named_parameters()]
        bufs = dict(model.named_buffers())
        self._buffers = [(b, bufs[n]) for n, b in self.model.named_buffers()]

    @torch.no_grad()
    def update(self) -> None:
        if self._pairs:
            ema = [e for e, _ in self._pairs]
            torch._foreach_lerp_(ema, [p for _, p in self._pairs], 1.0 - self.decay)
        for e, b in self._buffers:
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
