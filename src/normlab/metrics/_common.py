"""Input checks shared by the feature-space metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_features(x: Tensor | np.ndarray, name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """``x`` as a finite ``(N, d)`` tensor of ``dtype`` (on its own device), or a clear error."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name}: expected a Tensor or numpy array of features, got {type(x).__name__}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, d), got {tuple(x.shape)}")
    x = x.detach().to(dtype)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name}: {bad} of {x.shape[0]} feature rows hold NaN or inf")
    return x


def check_pair(real: Tensor, fake: Tensor, min_samples: int) -> None:
    """Same feature dimension and enough samples on both sides."""
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}"
        )
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] < min_samples:
            raise ValueError(f"{name}: need at least {min_samples} samples, got {x.shape[0]}")
