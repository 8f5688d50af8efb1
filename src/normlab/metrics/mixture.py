"""Mode-collapse metrics for the 2-D Gaussian mixtures (PacGAN, Lin et al. 2018).

For generated samples ``x_1..x_N`` and a mixture with modes ``m_1..m_K`` and std ``s``:

* a sample is **high quality** (HQ) when ``min_k ||x - m_k|| <= QUALITY_STDS * s`` (3 std);
  ``high_quality_frac`` is the fraction of HQ samples;
* a mode is **covered** when at least one HQ sample has it as its nearest mode;
  ``modes_covered`` counts them;
* ``reverse_kl = KL(q || p) = sum_k q_k log(q_k / p_k)``, where ``q`` is the histogram of the
  nearest-mode assignments of the HQ samples (normalised over the HQ samples only) and ``p``
  the uniform distribution ``1/K`` over modes. Natural log (nats).

Conventions, exactly:

* **Empty modes** need no smoothing in this direction: they have ``q_k = 0`` and contribute
  ``0 * log 0 = 0``. No smoothing constant is used anywhere. The value lies in ``[0, log K]``:
  0 when the HQ samples spread evenly over all modes, ``log K`` when they all sit on one mode.
* **No HQ sample at all**: ``q`` is undefined; ``reverse_kl`` is set to ``log K``, its largest
  possible value (a generator with no sample on any mode is scored no better than one collapsed
  onto a single mode), so that it stays finite and can be averaged over seeds.
* Non-finite samples (NaN / inf) count as samples that are not high quality.

PacGAN counts over ``NUM_EVAL_SAMPLES = 2500`` samples; the function takes whatever it is given,
so callers should pass that many for numbers comparable with the literature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normlab.data.mixtures import QUALITY_STDS, MixtureSpec

#: How many generated samples PacGAN evaluates (its tables count modes over 2,500 samples).
NUM_EVAL_SAMPLES = 2500


def mode_assignments(samples: Tensor, spec: MixtureSpec) -> tuple[Tensor, Tensor]:
    """Each sample's nearest mode ``(N,)`` (int64) and whether it is high quality (bool)."""
    if samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"expected samples of shape (N, 2), got {tuple(samples.shape)}")
    x = samples.detach().to("cpu", torch.float64)
    finite = torch.isfinite(x).all(dim=1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    dist = torch.cdist(x, spec.means_tensor(torch.float64))  # (N, K), exact for 2-D
    nearest_dist, nearest = dist.min(dim=1)
    high_quality = finite & (nearest_dist <= QUALITY_STDS * spec.std)
    return nearest, high_quality


def mixture_metrics(samples: Tensor, spec: MixtureSpec) -> dict:
    """``modes_covered`` (int), ``high_quality_frac`` and ``reverse_kl`` (floats) of ``samples``.

    See the module docstring for the exact definitions and the empty-mode conventions.
    """
    if samples.shape[0] == 0:
        raise ValueError("mixture_metrics needs at least one sample")
    nearest, hq = mode_assignments(samples, spec)
    k = spec.num_modes
    counts = torch.bincount(nearest[hq], minlength=k).to(torch.float64)
    num_hq = int(counts.sum())
    if num_hq == 0:
        reverse_kl = math.log(k)
    else:
        q = counts / num_hq
        nz = q > 0
        reverse_kl = float((q[nz] * torch.log(q[nz] * k)).sum())
    return {
        "modes_covered": int((counts > 0).sum()),
        "high_quality_frac": num_hq / samples.shape[0],
        "reverse_kl": reverse_kl,
    }
