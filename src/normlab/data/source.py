"""``load_data(spec)``: one entry point for every data source, and the batch stream a run draws.

Specs::

    ring8, grid25         the PacGAN 2-D Gaussian mixtures (sampled afresh, infinite)
    digits                scikit-learn's 1,797 real 8x8 digits
    stacked-digits        128,000 8x8 images of three digits stacked as RGB: 1000 modes
                          (Stacked MNIST from the bundled digits; normlab.data.stacked)
    folder:PATH           a folder of image files (any format PIL reads)
    npz:PATH              an array of images in an .npz/.npy file (NHWC or NCHW, uint8 or float)
    cifar10:PATH          the CIFAR-10 python-pickle batches folder (cifar-10-batches-py)

A ``BatchStream`` draws the training batches. Its whole position (the random generator
state; for finite data also the epoch and the index inside it) is ``state_dict()``, which
a checkpoint stores, so that a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.data.mixtures import MIXTURES, MixtureSpec

#: The spec prefixes that take a path.
PATH_KINDS = ("folder", "npz", "cifar10")


@dataclass
class Data:
    """A loaded data source: a mixture (``kind == "mixture"``) or images (``"images"``).

    ``images`` is float32 ``(N, C, H, W)`` in ``[-1, 1]`` (or ``(N, C*H*W)`` when loaded
    ``flatten``-ed for an MLP); ``image_shape`` is always ``(C, H, W)``.
    """

    spec: str
    kind: str
    mixture: MixtureSpec | None = None
    images: Tensor | None = None
    labels: Tensor | None = None
    image_shape: tuple[int, int, int] | None = None
    flat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample as models see it: ``(2,)``, ``(C, H, W)`` or ``(C*H*W,)``."""
        if self.kind == "mixture":
            return (2,)
        assert self.image_shape is not None
        return (int(np.prod(self.image_shape)),) if self.flat else self.image_shape

    @property
    def resolution(self) -> int | None:
        return None if self.image_shape is None else self.image_shape[1]

    @property
    def channels(self) -> int | None:
        return None if self.image_shape is None else self.image_shape[0]

    def __len__(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])

    def stream(self, batch_size: int, seed: int) -> BatchStream:
        """The training batch stream, seeded."""
        return BatchStream(self, batch_size, seed)

    def as_images(self, x: Tensor) -> Tensor:
        """Samples of this data (possibly flat) as ``(N, C, H, W)`` images."""
        assert self.image_shape is not None
        return x.reshape(x.shape[0], *self.image_shape)

    def real_sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` real samples, drawn without replacement where the data are finite."""
        gen = torch.Generator().manual_seed(seed)
        if self.kind == "mixture":
            assert self.mixture is not None
            return self.mixture.sample(n, generator=gen)
        assert self.images is not None
        idx = torch.randperm(len(self), generator=gen)[: min(n, len(self))]
        return self.images[idx]


class BatchStream:
    """Training batches: fresh mixture samples, or shuffled epochs of images (no partial batch)."""

    def __init__(self, data: Data, batch_size: int, seed: int) -> None:
        if data.kind == "images" and len(data) < batch_size:
            raise ValueError(
                f"data {data.spec!r} holds {len(data)} images, fewer than one batch "
                f"(batch_size={batch_size}); lower batch_size"
            )
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.index = 0  # next position inside the current epoch's permutation
        self._perm: Tensor | None = None

    def _permutation(self) -> Tensor:
        if self._perm is None:  # a pure function of (seed, epoch): nothing else to store
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(len(self.data), generator=gen)
        return self._perm

    def next(self) -> Tensor:
        """The next batch, ``(batch_size, *sample_shape)``."""
        if self.data.kind == "mixture":
            assert self.data.mixture is not None
            return self.data.mixture.sample(self.batch_size, generator=self.generator)
        if self.index + self.batch_size > len(self.data):
            self.epoch += 1
            self.index = 0
            self._perm = None
        idx = self._permutation()[self.index : self.index + self.batch_size]
        self.index += self.batch_size
        assert self.data.images is not None
        return self.data.images[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "index": self.index,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size") != self.batch_size or state.get("seed") != self.seed:
            raise ValueError(
                f"data position was saved for batch_size={state.get('batch_size')}, "
                f"seed={state.get('seed')}; this run has batch_size={self.batch_size}, "
                f"seed={self.seed}"
            )
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
        self._perm = None


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to square and resize (antialiased bilinear) ``(N, C, H, W)`` images."""
    _n, _c, h, w = images.shape
    if h == w == resolution:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    t = torch.from_numpy(np.ascontiguousarray(images[:, :, top : top + side, left : left + side]))
    out = F.interpolate(
        t, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(-1.0, 1.0).numpy()


def load_data(spec: str, *, flatten: bool = False, resolution: int | None = None) -> Data:
    """Load the data named by ``spec`` (see the module docstring).

    Args:
        spec: ``ring8``, ``grid25``, ``digits``, ``stacked-digits``, ``folder:PATH``,
            ``npz:PATH`` or ``cifar10:PATH``.
        flatten: give images as flat vectors ``(N, C*H*W)`` (for the ``mlp`` architecture).
        resolution: centre-crop and resize images to this square size (None keeps them).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string, got {spec!r}")
    if spec in MIXTURES:
        return Data(spec=spec, kind="mixture", mixture=MIXTURES[spec])
    from normlab.data import images as img

    kind, sep, path = spec.partition(":")
    labels: np.ndarray | None
    if spec == "digits":
        from normlab.data.digits import load_digits_array

        arr, labels = load_digits_array()
    elif spec == "stacked-digits":
        from normlab.data.stacked import (
            STACKED_TRAIN_SEED,
            STACKED_TRAIN_SIZE,
            mode_index,
            stacked_digits,
        )

        arr, triples = stacked_digits(STACKED_TRAIN_SIZE, STACKED_TRAIN_SEED)
        labels = mode_index(triples)  # the mode, 0..999
    elif sep and kind in PATH_KINDS:
        if not path:
            raise ValueError(f"data spec {spec!r} lacks its path: write {kind}:/path/to/data")
        if kind == "folder":
            arr, labels = img.load_folder(path, resolution)
        elif kind == "npz":
            arr, labels = img.load_npz(path)
        else:
            arr, labels = img.load_cifar10(path)
    else:
        raise ValueError(
            f"unknown data {spec!r}; choose one of: {', '.join(MIXTURES)}, digits, "
            "stacked-digits, " + ", ".join(f"{k}:PATH" for k in PATH_KINDS)
        )
    if resolution is not None:
        arr = _resize(arr, resolution)
    images = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    shape = tuple(int(s) for s in images.shape[1:])
    if flatten:
        images = images.reshape(images.shape[0], -1)
    return Data(
        spec=spec,
        kind="images",
        images=images,
        labels=None if labels is None else torch.from_numpy(labels),
        image_shape=shape,  # type: ignore[arg-type]
        flat=flatten,
    )
