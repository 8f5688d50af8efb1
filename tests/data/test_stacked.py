"""Stacked digits: three independent digits of the bundled set as the channels, 1000 modes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from normlab.data import digit_split, load_data, stacked_digits
from normlab.data.stacked import HELDOUT_PER_CLASS, STACKED_TRAIN_SIZE, mode_index


def _digit_rows(split: str) -> dict[bytes, int]:
    """Each digit of ``split`` (as bytes of its pixels) -> its label."""
    x, y = digit_split(split)
    return {img.tobytes(): int(lab) for img, lab in zip(x[:, 0], y)}


def test_splits_are_disjoint_stratified_and_cover_the_digits():
    bunch = load_digits()
    xt, _ = digit_split("train")
    xh, yh = digit_split("heldout")
    assert xt.shape[0] + xh.shape[0] == bunch.images.shape[0]
    assert np.bincount(yh, minlength=10).tolist() == [HELDOUT_PER_CLASS] * 10
    assert not set(_digit_rows("train")) & set(_digit_rows("heldout"))  # disjoint
    # Same values as the `digits` data: grey levels 0..16 mapped to [-1, 1].
    assert xt.dtype == np.float32 and xt.min() == -1.0 and xt.max() == 1.0
    raw = {
        (img * 2.0 / 16.0 - 1.0).astype(np.float32).tobytes(): t
        for img, t in zip(bunch.images, bunch.target)
    }
    assert all(raw[img.tobytes()] == lab for img, lab in zip(xh[:, 0], yh))
    with pytest.raises(ValueError, match="split must be one of train, heldout; got 'test'"):
        digit_split("test")


def test_stacked_channels_are_digits_of_the_split_with_their_labels():
    x, d = stacked_digits(500, seed=3)
    assert x.shape == (500, 3, 8, 8) and x.dtype == np.float32 and d.shape == (500, 3)
    train = _digit_rows("train")
    for img, triple in zip(x, d):
        for c in range(3):
            assert train[img[c].tobytes()] == triple[c]  # a training digit, labelled right
    xh, dh = stacked_digits(200, seed=3, split="heldout")
    held = _digit_rows("heldout")
    assert all(held[img[c].tobytes()] == t[c] for img, t in zip(xh, dh) for c in range(3))


def test_stacked_is_deterministic_and_uniform_over_the_1000_modes():
    a, da = stacked_digits(26_000, seed=1)
    b, db = stacked_digits(26_000, seed=1)
    assert np.array_equal(a, b) and np.array_equal(da, db)
    assert not np.array_equal(stacked_digits(50, seed=2)[1], da[:50])
    modes = mode_index(da)
    assert np.array_equal(modes, da[:, 0] * 100 + da[:, 1] * 10 + da[:, 2])
    counts = np.bincount(modes, minlength=1000)
    assert (counts > 0).all()
    # Independent channels: each digit ~ 10% per channel, all-equal triples ~ 1%.
    for c in range(3):
        assert np.abs(np.bincount(da[:, c], minlength=10) / 26_000 - 0.1).max() < 0.01
    assert abs(np.mean((da[:, 0] == da[:, 1]) & (da[:, 1] == da[:, 2])) - 0.01) < 0.003


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        stacked_digits(0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        stacked_digits(3, seed=-1)
    with pytest.raises(ValueError, match="expected digit triples of shape"):
        mode_index(np.zeros((3, 2), dtype=np.int64))


def test_load_data_stacked_digits():
    data = load_data("stacked-digits")
    assert data.kind == "images" and data.image_shape == (3, 8, 8)
    assert len(data) == STACKED_TRAIN_SIZE
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) <= 999
    x, d = stacked_digits(STACKED_TRAIN_SIZE, seed=0)
    assert np.array_equal(data.images[:100].numpy(), x[:100])
    assert np.array_equal(data.labels[:100].numpy(), mode_index(d[:100]))
    flat = load_data("stacked-digits", flatten=True)
    assert flat.images.shape == (STACKED_TRAIN_SIZE, 3 * 8 * 8)
