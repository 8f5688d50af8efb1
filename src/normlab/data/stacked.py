"""Stacked digits: the Stacked MNIST mode-collapse benchmark built from scikit-learn's 8x8 digits.

Stacked MNIST (Metz et al. 2017, VEEGAN, PacGAN) stacks three independently drawn MNIST digits as
the three colour channels of one image, so the data have ``10^3 = 1000`` modes (digit triples), all
equally likely; a generator's mode coverage is counted by classifying each channel of its samples.
``stacked_digits`` builds the same thing from the 1,797 handwritten digits scikit-learn ships, so
nothing is downloaded::

    images[i, c] = digit_{j(i, c)},  j(i, c) drawn uniformly and independently from the split

and the image's mode is ``100 * label[i, 0] + 10 * label[i, 1] + label[i, 2]``.

**Resolution: 8x8, the digits' own.** A GAN step of the standard CNN (width 16, batch 64) costs
about 70 ms on one core at 8x8, nearly all of it in oneDNN's small-conv calls; upsampling to 16x16
or 32x32 multiplies every conv's work by 4 or 16 and adds no information (the digits have 64
pixels), so a seeds x methods study would take hours instead of minutes. ``--set resolution=16``
(or 32) still works; the mode counter then scales samples back to 8x8 before classifying them.

**Splits.** The digits are split once, deterministically and stratified by class:
``HELDOUT_PER_CLASS`` digits of each class (about 20%) are held out for measuring the accuracy
of the digit classifier that counts modes (``normlab.metrics.stacked_digits_metrics``); the rest
(``split="train"``) make up the stacked training images and train that classifier. Values are
as for ``digits``: float32 in ``[-1, 1]``, shape ``(n, 3, 8, 8)``.
"""

from __future__ import annotations

import functools

import numpy as np

from normlab.data.digits import load_digits_array

#: Data spec of the stacked-digits training set for ``load_data`` / ``--data``.
STACKED_SPEC = "stacked-digits"
#: Stacked images in the training set ``load_data("stacked-digits")`` builds (VEEGAN's and
#: PacGAN's Stacked MNIST training set has 128,000).
STACKED_TRAIN_SIZE = 128_000
#: The seed of that training set (the data are the same for every run; runs' seeds shuffle it).
STACKED_TRAIN_SEED = 0
#: Number of modes: digit triples.
NUM_MODES = 1000
#: Digits of each class held out (of 174-183 per class), for the classifier's accuracy.
HELDOUT_PER_CLASS = 36
#: Seed of the train / held-out split of the digits.
SPLIT_SEED = 0
#: The splits ``stacked_digits`` and ``digit_split`` accept.
SPLITS = ("train", "heldout")


def digit_split(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The digits of ``split``: ``(images, labels)``, ``(m, 1, 8, 8)`` float32 in ``[-1, 1]``
    and ``(m,)`` int64.

    ``heldout`` holds ``HELDOUT_PER_CLASS`` digits of each class (360 in all), ``train`` the other
    1,437; the split is fixed (seeded, stratified by class) and the two are disjoint.

    Example::

        >>> x, y = digit_split("heldout")
        >>> x.shape, int((y == 3).sum())
        ((360, 1, 8, 8), 36)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    images, labels, held = _digits_and_split()
    keep = held if split == "heldout" else ~held
    return images[keep], labels[keep]  # boolean indexing copies: callers may write to them


@functools.lru_cache(maxsize=1)
def _digits_and_split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits, their labels and the held-out mask (read from scikit-learn once a process)."""
    images, labels = load_digits_array()
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.zeros(labels.shape[0], dtype=bool)
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        held[rng.permutation(idx)[:HELDOUT_PER_CLASS]] = True
    for a in (images, labels, held):
        a.flags.writeable = False
    return images, labels, held


def stacked_digits(n: int, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``n`` stacked-digit images and their digit triples: ``(images, digits)``.

    ``images`` is float32 ``(n, 3, 8, 8)`` in ``[-1, 1]``: channel ``c`` of image ``i`` is a
    digit of ``split`` drawn uniformly at random, independently of the other channels and images
    (with replacement); ``digits`` is int64 ``(n, 3)``, the class of each channel, so the image's
    mode is ``digits @ [100, 10, 1]`` in ``0..999``. Deterministic for a given ``(n, seed, split)``.

    Example::

        >>> x, d = stacked_digits(4, seed=1)
        >>> x.shape, x.dtype.name, d.shape
        ((4, 3, 8, 8), 'float32', (4, 3))
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    digits, labels = digit_split(split)
    idx = np.random.default_rng(int(seed)).integers(0, digits.shape[0], size=(int(n), 3))
    images = digits[idx, 0]  # (n, 3, 8, 8): one digit per channel
    return np.ascontiguousarray(images, dtype=np.float32), labels[idx]


def mode_index(digits: np.ndarray) -> np.ndarray:
    """The mode ``100 d_0 + 10 d_1 + d_2`` (``0..999``) of each row of digit triples ``(n, 3)``."""
    digits = np.asarray(digits)
    if digits.ndim != 2 or digits.shape[1] != 3:
        raise ValueError(f"expected digit triples of shape (n, 3), got {digits.shape}")
    return digits @ np.array([100, 10, 1], dtype=digits.dtype)
