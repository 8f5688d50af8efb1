"""Feature networks for the image metrics, and feature extraction.

The standard FID network (Inception-v3 on ImageNet) needs a 100 MB weights file and is meaningless
for 8x8 digits, so for bundled data normlab measures FID/KID/PRDC on the features of a
``FeatureNet``: a small CNN classifier trained on the dataset itself; its features are the
penultimate layer (the global average pool of the last conv stage, like Inception's pool3).
Numbers on it are comparable between runs that use the *same* cached network, not with published
Inception FIDs.

* ``train_feature_net(images, labels)``: trains on a random 80% (seeded), reports the held-out
  accuracy on the other 20% as ``net.heldout_accuracy``. With ``labels=None`` it trains on a
  self-supervised pretext task instead (predict which of 4 rotations was applied; square images),
  for unlabelled data such as ``folder:``; ``net.task`` says which.
* ``load_or_train_feature_net(cache_path, images, labels)``: the same, cached in ``cache_path``
  (a dict of plain values and tensors, read back with ``torch.load(weights_only=True)``). The cache
  is keyed on a fingerprint of the data and the training settings and retrained when it differs.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.metrics._common import read_net_cache, restored, save_net_cache

#: The ``format`` tag of the cache file.
CACHE_FORMAT = "normlab.metrics.FeatureNet/1"


def _downsamples(size: int) -> int:
    """Stride-2 stages for the smaller image side: down to about 2-4 pixels, at most 3."""
    return max(0, min(3, int(math.log2(max(size, 1) / 2))))


class FeatureNet(nn.Module):
    """A small CNN: images ``(N, C, H, W)`` in ``[-1, 1]`` -> features ``(N, feature_dim)``.

    ``forward`` returns the features (the penultimate layer); ``logits`` the classifier output.
    Architecture: 3x3 conv (``width``), then per stage a 4x4 stride-2 conv and a 3x3 conv
    (doubling the width), LeakyReLU(0.1) after each, global average pool. Attributes:
    ``config`` (constructor arguments), ``heldout_accuracy`` (float, NaN until trained), ``task``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        width: int = 32,
        task: str = "classes",
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": int(in_channels),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "num_classes": int(num_classes),
            "width": int(width),
            "task": task,
        }
        self.task = task
        self.heldout_accuracy = float("nan")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.1)]
        ch = width
        for _ in range(_downsamples(min(image_size))):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
            layers += [nn.Conv2d(ch * 2, ch * 2, 3, padding=1), nn.LeakyReLU(0.1)]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = ch
        self.num_features = ch  # the name torchmetrics looks for
        self.head = nn.Linear(ch, num_classes)

    def _check(self, x: Tensor) -> None:
        c, (h, w) = self.config["in_channels"], self.config["image_size"]
        if x.dim() != 4 or x.shape[1] != c or tuple(x.shape[2:]) != (h, w):
            raise ValueError(
                f"FeatureNet expects images of shape (N, {c}, {h}, {w}), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.body(x).mean(dim=(2, 3))

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self(x))


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``net``'s features of ``images``, in batches, in eval mode: a float32 CPU tensor ``(N, d)``.

    Batches are moved to the network's device; its train/eval mode is restored afterwards.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.shape[0] == 0:
        raise ValueError("extract_features: no images")
    device = _device_of(net)
    was_training = net.training
    net.eval()
    try:
        out = [
            net(images[i : i + batch_size].to(device, torch.float32)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        net.train(was_training)
    return torch.cat(out)


def _rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """The pretext task: every image in its 4 rotations, labelled 0..3."""
    rotated = [torch.rot90(images, r, dims=(2, 3)) for r in range(4)]
    labels = torch.arange(4).repeat_interleave(images.shape[0])
    return torch.cat(rotated), labels


def _check_images(images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    images = images.detach().to("cpu", torch.float32)
    if labels is not None:
        labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if labels.min() < 0:
            raise ValueError("labels must be integers >= 0")
    elif images.shape[2] != images.shape[3]:
        raise ValueError(
            "without labels the feature net trains on predicting rotations, which needs square "
            f"images; got {images.shape[2]}x{images.shape[3]}"
        )
    return images, labels


def train_feature_net(
    images: Tensor,
    labels: Tensor | None,
    *,
    epochs: int = 10,
    seed: int = 0,
    width: int = 32,
    batch_size: int = 64,
    lr: float = 1e-3,
    holdout: float = 0.2,
    device: str | torch.device | None = None,
) -> FeatureNet:
    """Train a ``FeatureNet`` to classify ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` by ``labels``.

    Adam, cross-entropy; a seeded random ``holdout`` fraction is kept out of training and the
    accuracy on it is stored as ``net.heldout_accuracy``. Deterministic for a given seed on CPU;
    the global RNG state is left untouched. Returns the network in eval mode, on ``device``.
    """
    images, labels = _check_images(images, labels)
    task = "classes" if labels is not None else "rotation"
    num_classes = int(labels.max()) + 1 if labels is not None else 4
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=gen)
    n_hold = round(holdout * images.shape[0]) if images.shape[0] > 1 else 0
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    x_train, x_hold = images[train_idx], images[hold_idx]
    if labels is not None:
        y_train, y_hold = labels[train_idx], labels[hold_idx]
    else:
        (x_train, y_train), (x_hold, y_hold) = _rotations(x_train), _rotations(x_hold)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], tuple(images.shape[2:]), num_classes, width, task)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=gen)
        for i in range(0, x_train.shape[0], batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(net.logits(x_train[idx].to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    if x_hold.shape[0] > 0:
        with torch.no_grad():
            pred = torch.cat(
                [
                    net.logits(x_hold[i : i + 512].to(device)).argmax(1).cpu()
                    for i in range(0, x_hold.shape[0], 512)
                ]
            )
        net.heldout_accuracy = float((pred == y_hold).double().mean())
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _fingerprint(images: Tensor, labels: Tensor | None, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(repr((tuple(images.shape), sorted(settings.items()))).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(b"none" if labels is None else labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def save_feature_net(net: FeatureNet, path: str | Path, fingerprint: str = "") -> None:
    """Write ``net`` to ``path`` atomically (a dict of plain values and tensors)."""
    save_net_cache(net, path, CACHE_FORMAT, net.config, net.heldout_accuracy, fingerprint)


def load_feature_net(path: str | Path) -> tuple[FeatureNet, str]:
    """The ``FeatureNet`` stored in ``path`` (in eval mode, CPU) and its data fingerprint."""
    payload = read_net_cache(path, CACHE_FORMAT, "feature-net")
    cfg = payload["config"]
    net = FeatureNet(
        cfg["in_channels"], tuple(cfg["image_size"]), cfg["num_classes"], cfg["width"], cfg["task"]
    )
    return restored(net, payload)


def load_or_train_feature_net(
    cache_path: str | Path,
    images: Tensor,
    labels: Tensor | None,
    *,
    epochs: int = 10,
    seed: int = 0,
    width: int = 32,
    batch_size: int = 64,
    lr: float = 1e-3,
    holdout: float = 0.2,
    device: str | torch.device | None = None,
) -> FeatureNet:
    """The feature net cached in ``cache_path`` if it was trained on these data with these
    settings; otherwise train one (``train_feature_net``) and cache it there. A cache that is
    stale or unreadable is replaced, with a warning. The result is on ``device`` (default CPU)."""
    images, labels = _check_images(images, labels)
    settings = {
        "epochs": epochs,
        "seed": seed,
        "width": width,
        "batch_size": batch_size,
        "lr": lr,
        "holdout": holdout,
        "format": CACHE_FORMAT,
    }
    fingerprint = _fingerprint(images, labels, settings)
    cache_path = Path(cache_path)
    if cache_path.exists():
        try:
            net, cached = load_feature_net(cache_path)
            if cached == fingerprint:
                return net.to(device or "cpu")
            warnings.warn(
                f"{cache_path}: feature net was trained on other data or settings; retraining",
                stacklevel=2,
            )
        except (ValueError, KeyError, RuntimeError) as e:
            warnings.warn(
                f"{cache_path}: unusable feature-net cache ({e}); retraining", stacklevel=2
            )
    net = train_feature_net(
        images,
        labels,
        epochs=epochs,
        seed=seed,
        width=width,
        batch_size=batch_size,
        lr=lr,
        holdout=holdout,
        device=device,
    )
    save_feature_net(net, cache_path, fingerprint)
    return net
