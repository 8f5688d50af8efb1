"""scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download needed)."""

from __future__ import annotations

import numpy as np

#: Grey levels of ``load_digits`` run over ``[0, DIGITS_MAX]``.
DIGITS_MAX = 16.0


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: ``(1797, 1, 8, 8)`` float32 in ``[-1, 1]`` and ``(1797,)`` int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) * (2.0 / DIGITS_MAX) - 1.0
    return images[:, None, :, :], bunch.target.astype(np.int64)
