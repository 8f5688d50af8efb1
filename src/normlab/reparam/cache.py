"""``nl.cached()``: opt-in, scoped sharing of computed weights and power steps.

Outside the block every forward computes each layer's effective weight from the current
raw tensors, and a training-mode forward of an SN-family layer takes its power step: what
PyTorch's own parametrizations do, so nothing a user writes to the raw tensors (``.data``
copies, in-place edits, ``load_state_dict``, a new ``scale``) is ever missed.

Inside ``with nl.cached():`` each layer computes its weight (and takes its power step) once,
at its first use, and every later forward in the block reuses that tensor: a discriminator
called on the real and the fake batch before one backward then takes one power step, as in
the BSN reference code, and its normalization runs once. Leaving the block drops everything.
The price is PyTorch's ``parametrize.cached()``'s: inside the block, changes to the raw
tensors are *not* seen, so do not step an optimizer inside it.

A weight first computed without grad (``torch.no_grad()``) is computed again for a forward
with grad (it has no graph to the raw tensors), without a second power step.

Example::

    >>> with nl.cached():
    ...     loss = F.relu(1 - D(real)).mean() + F.relu(1 + D(fake)).mean()
    >>> loss.backward()
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightCache:
    """The weights computed inside one ``cached()`` block, and which layers have stepped."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, str, bool], tuple[nn.Module, Tensor | float]] = {}
        self._stepped: dict[int, nn.Module] = {}

    def get(self, owner: nn.Module, kind: str = "weight") -> Tensor | float | None:
        """The ``kind`` ("weight" or "coefficient") ``owner`` computed in this block."""
        hit = self._values.get((id(owner), kind, torch.is_grad_enabled()))
        return None if hit is None else hit[1]

    def put(self, owner: nn.Module, kind: str, value: Tensor | float) -> None:
        self._values[(id(owner), kind, torch.is_grad_enabled())] = (owner, value)

    def first_step(self, owner: nn.Module) -> bool:
        """True the first time ``owner`` asks in this block (it takes its step then)."""
        if id(owner) in self._stepped:
            return False
        self._stepped[id(owner)] = owner  # the reference keeps the id from being reused
        return True


_ACTIVE: contextvars.ContextVar[WeightCache | None] = contextvars.ContextVar(
    "normlab_weight_cache", default=None
)


def active_cache() -> WeightCache | None:
    """The cache of the innermost ``cached()`` block, or None outside one."""
    return _ACTIVE.get()


@contextmanager
def cached() -> Iterator[WeightCache]:
    """Share each layer's computed weight and power step across the forwards in the block.

    Nested blocks share the outermost block's cache. See the module docstring.
    """
    if _ACTIVE.get() is not None:
        yield _ACTIVE.get()
        return
    cache = WeightCache()
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
