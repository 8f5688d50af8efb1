"""Learning-rate schedules of a run, computed from the step alone (so resuming needs no state).

``lr_factor(schedule, step, steps)`` multiplies the base learning rates at generator step
``step`` (1-based) of a ``steps``-step run:

* ``none``: 1 (constant);
* ``linear``: ``1 - (step - 1) / steps``, from 1 at the first step down to ``1 / steps`` at
  the last (SNGAN's linear decay to zero);
* ``cosine``: ``(1 + cos(pi * (step - 1) / steps)) / 2``.

The n_dis discriminator updates of a step use that step's factor. A run resumed with a
different ``steps`` follows the new schedule from the step it resumes at.

Example::

    >>> lr_factor("linear", 1, 100), lr_factor("linear", 51, 100)
    (1.0, 0.5)
"""

from __future__ import annotations

import math

import torch

#: The schedules ``lr_decay`` accepts.
LR_SCHEDULES = ("none", "linear", "cosine")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The factor on the base learning rates at ``step`` of ``steps`` (see the module doc)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_decay must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")
    if steps < 1 or not 1 <= step <= steps:
        raise ValueError(f"step must lie in [1, steps={steps}], got {step}")
    t = (step - 1) / steps
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``opt`` to ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
