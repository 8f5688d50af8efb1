"""Precision, recall, density, coverage (Naeem et al. 2020; clovaai/generative-evaluation-prdc).

With ``NND_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its own set (itself
excluded) and ``B(x, r)`` the open ball (strict ``<``, as in the reference code)::

    precision = 1/M sum_j 1[ exists i: Y_j in B(X_i, NND_k(X_i)) ]
    recall    = 1/N sum_i 1[ exists j: X_i in B(Y_j, NND_k(Y_j)) ]
    density   = 1/(kM) sum_j sum_i 1[ Y_j in B(X_i, NND_k(X_i)) ]
    coverage  = 1/N sum_i 1[ exists j: Y_j in B(X_i, NND_k(X_i)) ]

``X`` real (N samples), ``Y`` fake (M samples). Same definitions as the reference
``compute_prdc``; the differences are only in how: torch, squared Euclidean distances (float64;
float32 on request) compared with squared radii, computed in row chunks so that the full
``N x M`` matrix is never held (10k x 10k would be 800 MB in float64).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from normlab.metrics._common import as_features, check_pair

#: Rows of a distance matrix computed at once (chunk of 1024 x 10k float64 = 80 MB).
CHUNK_ROWS = 1024


def _sq_dists(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))``, clamped at 0 against round-off."""
    a_sq = (a * a).sum(dim=1, keepdim=True)
    return torch.addmm(a_sq + b_sq[None, :], a, b.T, alpha=-2.0).clamp_(min=0.0)


def kth_nn_sq_radii(x: Tensor, k: int) -> Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row ``(N,)``."""
    x_sq = (x * x).sum(dim=1)
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        d = _sq_dists(x[start : start + CHUNK_ROWS], x, x_sq)
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + start] = 0.0  # the point itself: exactly 0, so it is the 1st of k+1
        out[start : start + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def prdc(
    real: Tensor | np.ndarray,
    fake: Tensor | np.ndarray,
    *,
    k: int = 5,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """``precision``, ``recall``, ``density``, ``coverage`` (floats) of ``fake`` vs ``real``.

    Both sets are first centred on the real mean (distances do not change; the round-off of
    ``|a|^2 + |b|^2 - 2 a.b`` does, for features far from the origin). ``dtype=torch.float32``
    is about 2.5x faster on CPU and changes only near-ties.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real = as_features(real, "real")
    fake = as_features(fake, "fake").to(real.device)
    check_pair(real, fake, min_samples=k + 1)
    centre = real.mean(dim=0)
    real, fake = (real - centre).to(dtype), (fake - centre).to(dtype)
    r_real = kth_nn_sq_radii(real, k)  # (N,)
    r_fake = kth_nn_sq_radii(fake, k)  # (M,)
    real_sq = (real * real).sum(dim=1)

    n, m = real.shape[0], fake.shape[0]
    in_real_ball_any = torch.zeros(m, dtype=torch.bool, device=real.device)  # precision
    in_real_ball_count = torch.zeros(m, dtype=torch.int64, device=real.device)  # density
    real_in_fake_ball = torch.zeros(n, dtype=torch.bool, device=real.device)  # recall
    min_to_fake = torch.full((n,), float("inf"), dtype=dtype, device=real.device)
    for start in range(0, m, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, m)
        d = _sq_dists(fake[start:stop], real, real_sq)  # (chunk, N): fake j vs real i
        inside = d < r_real[None, :]
        in_real_ball_any[start:stop] = inside.any(dim=1)
        in_real_ball_count[start:stop] = inside.sum(dim=1, dtype=torch.int64)
        real_in_fake_ball |= (d < r_fake[start:stop, None]).any(dim=0)
        min_to_fake = torch.minimum(min_to_fake, d.min(dim=0).values)
    return {
        "precision": float(in_real_ball_any.double().mean()),
        "recall": float(real_in_fake_ball.double().mean()),
        "density": float(in_real_ball_count.sum()) / (k * m),
        "coverage": float((min_to_fake < r_real).double().mean()),
    }
