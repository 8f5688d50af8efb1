"""Fréchet distance between two feature sets (Heusel et al. 2017), the "FID" on Inception features.

``FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` with the sample means and the
unbiased (``N - 1``) sample covariances of the two sets.

The arithmetic is torchmetrics' ``FrechetInceptionDistance`` fed with the features directly (a
custom identity "feature extractor"): it accumulates sums and the covariance in float64 and takes
``Tr((S_r S_f)^(1/2))`` as the sum of the square roots of the eigenvalues of ``S_r S_f``
(``torch.linalg.eigvals``; ``S_r S_f`` is similar to the PSD matrix ``S_r^(1/2) S_f S_r^(1/2)``,
so its eigenvalues are real and >= 0 up to round-off, which the real part discards). That avoids
the iterative ``scipy.linalg.sqrtm`` of pytorch-fid and its ``eps`` retry; the tests check the
result against ``scipy.linalg.sqrtm`` on the same statistics.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from normlab.metrics._common import as_features, check_pair


def fid(real: Tensor | np.ndarray, fake: Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to ``real`` and ``fake`` features (N, d)."""
    from normlab.metrics._tm import frechet_metric

    real = as_features(real, "real")
    fake = as_features(fake, "fake")
    check_pair(real, fake, min_samples=2)
    metric = frechet_metric(real.shape[1]).to(real.device)
    metric.update(real, real=True)
    metric.update(fake.to(real.device), real=False)
    return float(metric.compute())
