"""What the experiments share: the bundled digits, seeding, threads, evaluation and output files."""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (seeds code that uses the global state)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch thread (the models are tiny: threads only add overhead)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.25, image: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 bundled 8x8 digits, standardised, split (stratified) by ``seed``.

    Returns ``x_train, y_train, x_test, y_test``; ``x`` is ``(n, 1, 8, 8)`` when ``image`` else
    ``(n, 64)``. Pixels (0..16) are scaled by the training set's mean and standard deviation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean, std = x_tr.mean(), x_tr.std()
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return (
        torch.from_numpy(x_tr).reshape(shape),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te).reshape(shape),
        torch.from_numpy(y_te),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Eval-mode accuracy of ``model`` on ``(x, y)`` (restores the model's mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def finite(value: float) -> float | None:
    """``value`` if finite, else ``None`` (JSON has no NaN/inf)."""
    return value if math.isfinite(value) else None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    """A matplotlib figure on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band(
    ax: Any, x: list, mean: list, lo: list, hi: list, style: str = "-", alpha: float = 0.2, **kw
) -> None:
    """A line of ``mean`` over ``x`` with the band ``lo..hi`` shaded in its colour."""
    (line,) = ax.plot(x, mean, style, **kw)
    ax.fill_between(x, lo, hi, alpha=alpha, color=line.get_color())
