"""load_data: every source, its shapes and ranges, and a clear error for every kind of bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.data import load_data
from normlab.data.images import CIFAR10_TRAIN_FILES


def _png(path, size=(8, 8), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_mixtures():
    for name, k in (("ring8", 8), ("grid25", 25)):
        d = load_data(name)
        assert d.kind == "mixture" and d.mixture.num_modes == k and d.sample_shape == (2,)
        x = d.stream(64, seed=0).next()
        assert x.shape == (64, 2)


def test_digits_shapes_and_range():
    d = load_data("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.sample_shape == (1, 8, 8)
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert d.labels.shape == (1797,) and set(d.labels.tolist()) == set(range(10))
    flat = load_data("digits", flatten=True)
    assert flat.images.shape == (1797, 64) and flat.sample_shape == (64,)
    assert flat.as_images(flat.images[:3]).shape == (3, 1, 8, 8)


def test_folder_rgb_grey_and_resize(tmp_path):
    for i in range(3):
        _png(tmp_path / "rgb" / f"{i}.png", value=40 * i)
    d = load_data(f"folder:{tmp_path / 'rgb'}")
    assert d.images.shape == (3, 3, 8, 8) and -1 <= d.images.min() <= d.images.max() <= 1
    for i in range(2):
        _png(tmp_path / "grey" / "sub" / f"{i}.jpg", size=(10, 12), mode="L")
    g = load_data(f"folder:{tmp_path / 'grey'}", resolution=8)
    assert g.images.shape == (2, 1, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="holds no image files"):
        load_data(f"folder:{tmp_path / 'empty'}")
    _png(tmp_path / "mixed" / "a.png", size=(8, 8))
    _png(tmp_path / "mixed" / "b.png", size=(16, 8))
    with pytest.raises(
        ValueError, match=r"2 different sizes: 8x8 \(e.g. a.png\); 16x8 \(e.g. b.png\)"
    ):
        load_data(f"folder:{tmp_path / 'mixed'}")
    # mixed sizes are fine once a resolution is asked for
    assert load_data(f"folder:{tmp_path / 'mixed'}", resolution=8).images.shape == (2, 3, 8, 8)
    _png(tmp_path / "bad" / "a.png")
    (tmp_path / "bad" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*b\.png"):
        load_data(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(ValueError, match="lacks its path"):
        load_data("folder:")
    with pytest.raises(ValueError, match="unknown data 'mnist'.*ring8.*digits.*folder:PATH"):
        load_data("mnist")


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),  # NHWC u8
        lambda: np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32),  # NCHW [0, 1]
        lambda: np.random.default_rng(0).random((5, 8, 8)) * 2 - 1,  # NHW [-1, 1]
    ],
)
def test_npz_layouts(tmp_path, make):
    arr = make()
    np.savez(tmp_path / "x.npz", images=arr, labels=np.arange(5))
    d = load_data(f"npz:{tmp_path / 'x.npz'}")
    assert d.images.shape[0] == 5 and d.images.shape[2:] == (8, 8)
    assert d.images.shape[1] in (1, 3)
    assert -1 <= d.images.min() and d.images.max() <= 1
    assert d.labels.tolist() == list(range(5))


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_data(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 8, 8)), b=np.zeros(2))
    with pytest.raises(ValueError, match="which array holds the images"):
        load_data(f"npz:{tmp_path / 'two.npz'}")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 5, 8, 7)))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        load_data(f"npz:{tmp_path / 'shape.npz'}")
    np.savez(tmp_path / "range.npz", images=np.full((2, 8, 8), 1000.0))
    with pytest.raises(ValueError, match="must lie in"):
        load_data(f"npz:{tmp_path / 'range.npz'}")
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "obj.npz", images=obj)
    with pytest.raises(ValueError, match="without pickles"):
        load_data(f"npz:{tmp_path / 'obj.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_data(f"npz:{tmp_path / 'junk.npz'}")


def _fake_cifar(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_TRAIN_FILES:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def test_cifar10(tmp_path):
    _fake_cifar(tmp_path / "cifar-10-batches-py")
    d = load_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    assert d.images.shape == (20, 3, 32, 32) and d.labels.shape == (20,)
    assert -1 <= d.images.min() and d.images.max() <= 1


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch evil_marker",))


def test_cifar10_errors(tmp_path, monkeypatch):
    with pytest.raises(
        FileNotFoundError, match=r"does not exist.*cifar-10-python.tar.gz.*data_batch_1"
    ):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    _fake_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    # a batch file carrying code is refused, not run
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "c" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch file.*refusing to load"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    assert not (tmp_path / "evil_marker").exists()


def test_stream_position_round_trip():
    for spec in ("ring8", "digits"):
        d = load_data(spec)
        s = d.stream(500, seed=3)
        for _ in range(4):  # digits: crosses an epoch boundary (1797 // 500 = 3 batches/epoch)
            s.next()
        state = s.state_dict()
        expected = [s.next() for _ in range(3)]
        s2 = d.stream(500, seed=3)
        s2.load_state_dict(state)
        for e in expected:
            assert torch.equal(s2.next(), e)


def test_stream_epochs_cover_every_image():
    d = load_data("digits")
    s = d.stream(599, seed=0)  # 3 batches = 1797: exactly one epoch
    seen = torch.cat([s.next() for _ in range(3)])
    assert torch.equal(seen.sum(0), d.images.sum(0)) or torch.allclose(seen.sum(0), d.images.sum(0))
    with pytest.raises(ValueError, match="fewer than one batch"):
        d.stream(5000, seed=0)


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch):
    """The bundled file read directly is scikit-learn's load_digits, exactly; without the file
    at its usual place, load_digits itself is used."""
    from sklearn.datasets import load_digits

    import normlab.data.digits as digits

    bunch = load_digits()
    want = bunch.images.astype(np.float32)[:, None] * (2.0 / 16.0) - 1.0
    assert digits._bundled_csv() is not None  # the fast route is the one tested first
    for route in ("file", "sklearn"):
        if route == "sklearn":
            monkeypatch.setattr(digits, "_bundled_csv", lambda: None)
        images, labels = digits.load_digits_array()
        assert images.dtype == np.float32 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, want)
        np.testing.assert_array_equal(labels, bunch.target)
