"""All image metrics at once, on the features of a feature network (``features``, ``inception``)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from normlab.metrics._common import as_features
from normlab.metrics.fid_score import fid
from normlab.metrics.kid_score import kid
from normlab.metrics.prdc_score import prdc

#: The keys of ``image_metrics``' result, in order.
IMAGE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")


def image_metrics(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    *,
    k: int = 5,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict:
    """``fid``, ``kid``, ``precision``, ``recall``, ``density``, ``coverage`` (floats).

    ``k`` is PRDC's neighbourhood size; ``kid_*`` and ``seed`` set KID's random subsets (a subset
    size above either set's size is clamped to it).
    """
    real = as_features(real_features, "real_features")
    fake = as_features(fake_features, "fake_features")
    out = {
        "fid": fid(real, fake),
        "kid": kid(real, fake, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed),
    }
    out.update(prdc(real, fake, k=k))
    return {key: out[key] for key in IMAGE_METRICS}
