"""The 2-D Gaussian mixtures of PacGAN (Lin et al. 2018), the CPU benchmarks of GAN mode collapse.

* ``ring8``: 8 modes at ``(cos 2 pi k / 8, sin 2 pi k / 8)``, k = 0..7 (radius 1), std 0.01.
  (Not ``linspace(0, 2 pi, 8)``: its first and last angles coincide, leaving 7 modes.)
* ``grid25``: 25 modes at ``{-4, -2, 0, 2, 4}^2``, std 0.05.

Every mode has the same weight. A sample is *high quality* when it lies within
``QUALITY_STDS`` standard deviations of its nearest mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: A sample within this many standard deviations of its nearest mode is "high quality".
QUALITY_STDS = 3.0


@dataclass(frozen=True)
class MixtureSpec:
    """An equal-weight isotropic Gaussian mixture in 2-D."""

    name: str
    means: tuple[tuple[float, float], ...]
    std: float

    @property
    def num_modes(self) -> int:
        return len(self.means)

    def means_tensor(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The modes' centres as a ``(num_modes, 2)`` tensor."""
        return torch.tensor(self.means, dtype=dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples, ``(n, 2)``, modes drawn uniformly."""
        modes = torch.randint(self.num_modes, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator) * self.std
        return self.means_tensor()[modes] + noise


RING8 = MixtureSpec(
    name="ring8",
    means=tuple((math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)) for k in range(8)),
    std=0.01,
)

GRID25 = MixtureSpec(
    name="grid25",
    means=tuple((float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)),
    std=0.05,
)

#: The mixtures by name.
MIXTURES: dict[str, MixtureSpec] = {RING8.name: RING8, GRID25.name: GRID25}


def get_mixture(name: str) -> MixtureSpec:
    """The mixture called ``name`` (``"ring8"`` or ``"grid25"``)."""
    try:
        return MIXTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown mixture {name!r}; choose one of: {', '.join(MIXTURES)}"
        ) from None
