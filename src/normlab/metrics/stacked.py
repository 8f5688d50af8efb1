"""The stacked-digits mode counter: a digit classifier, the 1000-mode metrics, and its features.

The Stacked MNIST protocol (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018), on the
bundled 8x8 digits (``normlab.data.stacked``): each of the three channels of a generated image is
classified by a digit classifier, the triple ``(d_0, d_1, d_2)`` is the sample's mode (1000 in
all), and over ``NUM_STACKED_EVAL_SAMPLES = 26,000`` samples

* ``modes_covered`` = number of distinct triples seen (of 1000);
* ``kl`` = ``KL(q || p) = sum_m q_m log(q_m / p_m)``, ``q`` the generated triple histogram
  (normalised counts), ``p = 1/1000`` uniform; natural log. Empty modes contribute
  ``0 log 0 = 0``, so no smoothing is needed: 0 for a perfectly even histogram, ``log 1000 = 6.91``
  for a generator that puts every sample on one triple;
* ``classifier_accuracy`` = the classifier's accuracy on the held-out digits (one channel at a
  time), which no training image or classifier update has seen; it must be at least
  ``MIN_CLASSIFIER_ACCURACY`` (97%) for the counts to mean anything.

The classifier (``DigitClassifier``: two 3x3 convs of 32 channels, 2x2 max-pool, a 128-unit layer,
dropout) is trained on the digits of ``split="train"`` only: 30 epochs of Adam(W), cosine learning
rate, fixed seeds, so that training it is deterministic on a given machine and thread count. It is
cached like the lab's other feature networks: a file keyed on a fingerprint of the data and the
settings, retrained when they differ. Its 128-d penultimate layer of each channel, concatenated
(384-d), is the feature space of FID/KID/PRDC on stacked digits (``StackedDigitFeatures``).

Example::

    >>> from normlab.data import stacked_digits
    >>> images, _ = stacked_digits(26_000, seed=1)
    >>> m = stacked_digits_metrics(images)  # doctest: +SKIP
    >>> m["modes_covered"], round(m["kl"], 2)  # doctest: +SKIP
    (1000, 0.02)
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

from normlab.data.stacked import NUM_MODES, digit_split
from normlab.metrics._common import read_net_cache, restored, save_net_cache

#: How many generated samples the protocol classifies (VEEGAN, PacGAN).
NUM_STACKED_EVAL_SAMPLES = 26_000
#: The held-out per-digit accuracy the classifier must reach.
MIN_CLASSIFIER_ACCURACY = 0.97
#: Side of the digits the classifier reads; other sizes are resized to it first.
DIGIT_SIZE = 8
#: The ``format`` tag of the classifier's cache file.
CLASSIFIER_FORMAT = "normlab.metrics.DigitClassifier/1"
#: Training settings of the classifier (part of the cache fingerprint).
CLASSIFIER_SETTINGS: dict[str, float | int] = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "dropout": 0.3,
    "width": 32,
    "hidden": 128,
    "seed": 0,
}
#: The keys of ``stacked_digits_metrics``' result.
STACKED_METRICS = ("modes_covered", "kl", "classifier_accuracy")


class DigitClassifier(nn.Module):
    """8x8 digit classifier: ``(N, 1, 8, 8)`` in ``[-1, 1]`` -> features ``(N, hidden)``.

    conv3x3(``width``), ReLU, conv3x3(``width``), ReLU, maxpool 2x2, flatten, dropout, linear to
    ``hidden``, ReLU (the features, ``forward``); dropout, linear to 10 (``logits``).
    ``heldout_accuracy`` is NaN until measured.
    """

    def __init__(self, width: int = 32, hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = {"width": int(width), "hidden": int(hidden), "dropout": float(dropout)}
        self.heldout_accuracy = float("nan")
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width * (DIGIT_SIZE // 2) ** 2, hidden),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 10))
        self.feature_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, DIGIT_SIZE, DIGIT_SIZE):
            raise ValueError(
                f"DigitClassifier expects digits of shape (N, 1, 8, 8), got {tuple(x.shape)}"
            )
        return self.body(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self(x))


@torch.no_grad()
def predict_digits(net: DigitClassifier, digits: Tensor, batch_size: int = 1024) -> Tensor:
    """The predicted class ``(N,)`` (int64, CPU) of single digits ``(N, 1, 8, 8)``, in eval mode.

    Batches of 1,024: the 78,000 digits of an evaluation (26,000 samples x 3 channels) took
    4.7 s on one core, against 6.3-8.8 s in batches of 4,096 (oneDNN's small convolutions).
    """
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        out = [
            net.logits(digits[i : i + batch_size].to(device, torch.float32)).argmax(1).cpu()
            for i in range(0, digits.shape[0], batch_size)
        ]
    finally:
        net.train(was)
    return torch.cat(out)


def heldout_accuracy(net: DigitClassifier) -> float:
    """``net``'s accuracy on the held-out digits (``digit_split("heldout")``, 360 digits)."""
    x, y = digit_split("heldout")
    pred = predict_digits(net, torch.from_numpy(x))
    return float((pred == torch.from_numpy(y)).double().mean())


def train_digit_classifier(**overrides: float | int) -> DigitClassifier:
    """Train a ``DigitClassifier`` on the training digits (``CLASSIFIER_SETTINGS``, with
    ``overrides``); its ``heldout_accuracy`` is measured on the held-out digits.

    Deterministic for the given settings on one machine and thread count; the global RNG state
    is left untouched. Returns the network in eval mode, gradients off.
    """
    bad = set(overrides) - set(CLASSIFIER_SETTINGS)
    if bad:
        raise ValueError(
            f"unknown classifier setting(s) {', '.join(sorted(bad))}; "
            f"valid: {', '.join(CLASSIFIER_SETTINGS)}"
        )
    s = {**CLASSIFIER_SETTINGS, **overrides}
    x_np, y_np = digit_split("train")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    batch = int(s["batch_size"])
    gen = torch.Generator().manual_seed(int(s["seed"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(s["seed"]))  # initialisation and dropout masks
        net = DigitClassifier(int(s["width"]), int(s["hidden"]), float(s["dropout"]))
        opt = torch.optim.AdamW(
            net.parameters(), lr=float(s["lr"]), weight_decay=float(s["weight_decay"])
        )
        steps = int(s["epochs"]) * math.ceil(x.shape[0] / batch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        net.train()
        for _ in range(int(s["epochs"])):
            order = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], batch):
                idx = order[i : i + batch]
                loss = F.cross_entropy(net.logits(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.heldout_accuracy = heldout_accuracy(net)
    return net


def _fingerprint(settings: dict) -> str:
    h = hashlib.sha256()
    h.update(repr(sorted(settings.items())).encode())
    for split in ("train", "heldout"):
        x, y = digit_split(split)
        h.update(x.tobytes())
        h.update(y.tobytes())
    return h.hexdigest()


def save_digit_classifier(net: DigitClassifier, path: str | Path, fingerprint: str = "") -> None:
    """Write ``net`` to ``path`` atomically (a dict of plain values and tensors)."""
    save_net_cache(net, path, CLASSIFIER_FORMAT, net.config, net.heldout_accuracy, fingerprint)


def load_digit_classifier(path: str | Path) -> tuple[DigitClassifier, str]:
    """The ``DigitClassifier`` stored at ``path`` (eval mode, CPU) and its fingerprint."""
    payload = read_net_cache(path, CLASSIFIER_FORMAT, "digit-classifier")
    cfg = payload["config"]
    net = DigitClassifier(cfg["width"], cfg["hidden"], cfg["dropout"])
    return restored(net, payload)


#: Classifiers trained in this process, by cache path ("" for none): training is deterministic,
#: so a second request in the same process gets the first network instead of retraining.
_TRAINED: dict[str, DigitClassifier] = {}


def digit_classifier(cache: str | Path | None = None) -> DigitClassifier:
    """The stacked-digits mode counter's classifier: read from ``cache`` if that file holds one
    trained on these digits with ``CLASSIFIER_SETTINGS``, otherwise trained (and written there
    when ``cache`` is given). A stale or unreadable cache is replaced, with a warning. Warns if the
    held-out accuracy is below ``MIN_CLASSIFIER_ACCURACY``."""
    fingerprint = _fingerprint(CLASSIFIER_SETTINGS)
    key = "" if cache is None else str(Path(cache).resolve())
    net = _TRAINED.get(key)
    if net is not None and getattr(net, "fingerprint", "") == fingerprint:
        return net
    net = None
    if cache is not None and Path(cache).exists():
        try:
            cached, stored = load_digit_classifier(cache)
            if stored == fingerprint:
                net = cached
            else:
                warnings.warn(
                    f"{cache}: digit classifier was trained on other data or settings; retraining",
                    stacklevel=2,
                )
        except (ValueError, KeyError, RuntimeError) as e:
            warnings.warn(
                f"{cache}: unusable digit-classifier cache ({e}); retraining", stacklevel=2
            )
    if net is None:
        net = train_digit_classifier()
        if cache is not None:
            save_digit_classifier(net, cache, fingerprint)
    if not net.heldout_accuracy >= MIN_CLASSIFIER_ACCURACY:
        warnings.warn(
            f"the stacked-digits classifier reaches {net.heldout_accuracy:.1%} on the held-out "
            f"digits, below the {MIN_CLASSIFIER_ACCURACY:.0%} the mode counts need",
            stacklevel=2,
        )
    net.fingerprint = fingerprint
    _TRAINED[key] = net
    return net


def _as_stacked(images: Tensor | np.ndarray) -> Tensor:
    """``images`` ``(N, 3, H, W)`` as a float32 CPU tensor of 8x8 images, or a clear error."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a Tensor or numpy array of images, got {type(images).__name__}")
    if images.dim() == 2 and images.shape[1] == 3 * DIGIT_SIZE**2:  # flattened, from an mlp
        images = images.reshape(-1, 3, DIGIT_SIZE, DIGIT_SIZE)
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(
            f"expected stacked-digit images of shape (N, 3, r, r), got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("stacked_digits_metrics needs at least one image")
    x = images.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        raise ValueError(f"{bad} of {x.shape[0]} images hold NaN or inf values")
    if x.shape[2] != DIGIT_SIZE:  # e.g. trained with --set resolution=16: back to the digits' 8x8
        x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", antialias=True)
    return x


def classify_stacked(images: Tensor | np.ndarray, classifier: DigitClassifier) -> Tensor:
    """Each channel's predicted digit: ``(N, 3)`` int64 for stacked images ``(N, 3, r, r)``."""
    x = _as_stacked(images)
    digits = x.reshape(-1, 1, DIGIT_SIZE, DIGIT_SIZE)
    return predict_digits(classifier, digits).reshape(-1, 3)


def triple_kl(modes: Tensor | np.ndarray, num_modes: int = NUM_MODES) -> float:
    """``KL(q || uniform)`` in nats of the histogram ``q`` of mode indices ``modes`` (0..K-1)."""
    counts = torch.bincount(torch.as_tensor(modes).reshape(-1), minlength=num_modes).double()
    q = counts / counts.sum()
    nz = q > 0
    return float((q[nz] * torch.log(q[nz] * num_modes)).sum())


def stacked_digits_metrics(
    images: Tensor | np.ndarray,
    *,
    classifier: DigitClassifier | None = None,
    cache: str | Path | None = None,
) -> dict:
    """``modes_covered`` (int, of 1000), ``kl`` (float, nats) and ``classifier_accuracy`` of
    generated stacked-digit ``images`` ``(N, 3, r, r)`` in ``[-1, 1]`` (see the module docstring).

    ``classifier`` defaults to ``digit_classifier(cache)``. The protocol classifies
    ``NUM_STACKED_EVAL_SAMPLES`` (26,000) samples; this takes whatever it is given. Images of
    another size than 8x8 are resized to 8x8 first (antialiased bilinear).
    """
    net = classifier if classifier is not None else digit_classifier(cache)
    triples = classify_stacked(images, net)
    modes = triples @ torch.tensor([100, 10, 1])
    return {
        "modes_covered": int(torch.unique(modes).numel()),
        "kl": triple_kl(modes),
        "classifier_accuracy": float(net.heldout_accuracy),
    }


class StackedDigitFeatures(nn.Module):
    """Features of stacked digits for FID/KID/PRDC: the classifier's features of each channel,
    concatenated, ``(N, 3, r, r) -> (N, 3 * hidden)`` (384-d by default)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.feature_dim = 3 * classifier.feature_dim
        self.num_features = self.feature_dim  # the name torchmetrics looks for
        self.eval()

    def train(self, mode: bool = True) -> StackedDigitFeatures:
        """A frozen feature network: the classifier (shared, cached) stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected stacked digits (N, 3, r, r), got {tuple(x.shape)}")
        if x.shape[2] != DIGIT_SIZE or x.shape[3] != DIGIT_SIZE:
            x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", antialias=True)
        n = x.shape[0]
        return self.classifier(x.reshape(n * 3, 1, DIGIT_SIZE, DIGIT_SIZE)).reshape(n, -1)
