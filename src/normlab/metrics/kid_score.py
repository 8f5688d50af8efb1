"""Kernel Inception Distance (Bińkowski et al. 2018) between two feature sets.

``KID`` is the unbiased estimate of the squared MMD with the cubic polynomial kernel
``k(x, y) = (x . y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size``
samples drawn (without replacement within a subset) from each set.

The arithmetic is torchmetrics' ``KernelInceptionDistance`` fed with the features directly. Its
subsets come from the global torch RNG; here they are drawn inside ``torch.random.fork_rng`` seeded
with ``seed``, so the result is reproducible and the caller's RNG state is untouched. Unlike
torchmetrics, a ``subset_size`` larger than either set is clamped to the smaller set's size (the
bundled datasets are small), rather than raising. Computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from normlab.metrics._common import as_features, check_pair


def kid(
    real: Tensor | np.ndarray,
    fake: Tensor | np.ndarray,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    return_std: bool = False,
) -> float | tuple[float, float]:
    """KID of ``real`` vs ``fake`` features ``(N, d)``: mean over subsets (and std, if asked)."""
    from normlab.metrics._tm import kid_metric

    real = as_features(real, "real")
    fake = as_features(fake, "fake")
    check_pair(real, fake, min_samples=2)
    size = min(subset_size, real.shape[0], fake.shape[0])
    metric = kid_metric(
        real.shape[1], subsets=subsets, subset_size=size, degree=degree, gamma=gamma, coef=coef
    ).to(real.device)
    metric.update(real, real=True)
    metric.update(fake.to(real.device), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return (float(mean), float(std)) if return_std else float(mean)
