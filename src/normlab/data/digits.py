"""scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download needed)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

#: Grey levels of ``load_digits`` run over ``[0, DIGITS_MAX]``.
DIGITS_MAX = 16.0


def _bundled_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: ``(1797, 1, 8, 8)`` float32 in ``[-1, 1]`` and ``(1797,)`` int64.

    The file ``sklearn.datasets.load_digits`` reads (64 grey levels then the label per row),
    read here directly: importing scikit-learn takes 3-4 s of every run's start on this CPU.
    Where the file is not at its usual place, through ``load_digits`` itself.
    """
    csv = _bundled_csv()
    if csv is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        grey, labels = bunch.images, bunch.target
    else:
        with gzip.open(csv, mode="rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        grey, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    images = grey.astype(np.float32) * (2.0 / DIGITS_MAX) - 1.0
    return images[:, None, :, :], labels.astype(np.int64)
