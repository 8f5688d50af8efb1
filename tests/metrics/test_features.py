"""The dataset's own feature network: training, caching, extraction."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import normlab.metrics.features as features_module
from normlab.metrics import (
    FeatureNet,
    extract_features,
    image_metrics,
    load_or_train_feature_net,
    train_feature_net,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = torch.from_numpy(d.images / 8.0 - 1.0).float()[:, None]  # (1797, 1, 8, 8) in [-1, 1]
    return images, torch.from_numpy(d.target)


@pytest.fixture(scope="module")
def digits_net(digits):
    return train_feature_net(*digits, epochs=4, seed=0)


def test_trained_on_digits_classifies_held_out_digits(digits, digits_net):
    images, _ = digits
    assert isinstance(digits_net, FeatureNet)
    assert digits_net.task == "classes"
    assert digits_net.heldout_accuracy > 0.85
    feats = extract_features(digits_net, images[:300])
    assert feats.shape == (300, digits_net.feature_dim) and feats.dtype == torch.float32
    assert not digits_net.training


def test_features_separate_real_from_noise(digits, digits_net):
    images, _ = digits
    real = extract_features(digits_net, images[:800])
    held = extract_features(digits_net, images[800:1600])
    noise = extract_features(digits_net, torch.rand(800, 1, 8, 8) * 2 - 1)
    same = image_metrics(real, held, kid_subset_size=200, kid_subsets=10)
    diff = image_metrics(real, noise, kid_subset_size=200, kid_subsets=10)
    assert diff["fid"] > 10 * same["fid"]
    assert diff["kid"] > 10 * same["kid"]
    assert same["precision"] > 0.8 and diff["precision"] < same["precision"] - 0.4


def test_deterministic_and_leaves_global_rng_alone(digits):
    images, labels = digits[0][:200], digits[1][:200]
    state = torch.get_rng_state()
    a = train_feature_net(images, labels, epochs=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_feature_net(images, labels, epochs=1, seed=3)
    c = train_feature_net(images, labels, epochs=1, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_cache_roundtrip(tmp_path, digits, monkeypatch):
    images, labels = digits[0][:300], digits[1][:300]
    path = tmp_path / "run" / "feature_net.pt"
    net = load_or_train_feature_net(path, images, labels, epochs=1)
    assert path.is_file()
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == net.config

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a valid cache")

    monkeypatch.setattr(features_module, "train_feature_net", no_training)
    again = load_or_train_feature_net(path, images, labels, epochs=1)
    assert again.heldout_accuracy == net.heldout_accuracy
    assert torch.equal(extract_features(again, images), extract_features(net, images))
    monkeypatch.undo()

    # other labels (or settings): stale, retrained and rewritten
    with pytest.warns(UserWarning, match="other data or settings"):
        load_or_train_feature_net(path, images, (labels + 1) % 10, epochs=1)
    # an unreadable cache: replaced
    path.write_text("not a checkpoint")
    with pytest.warns(UserWarning, match="unusable"):
        load_or_train_feature_net(path, images, labels, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_or_train_feature_net(path, images, labels, epochs=1)


def test_without_labels_trains_on_rotations():
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    net = train_feature_net(images, None, epochs=1)
    assert net.task == "rotation" and net.config["num_classes"] == 4
    assert 0.0 <= net.heldout_accuracy <= 1.0
    assert extract_features(net, images).shape == (64, net.feature_dim)
    with pytest.raises(ValueError, match="square"):
        train_feature_net(torch.zeros(8, 1, 8, 6), None, epochs=1)


def test_extract_features_batches_and_restores_mode(digits_net, digits):
    images = digits[0][:70]
    digits_net.train()
    whole = extract_features(digits_net, images, batch_size=256)
    assert digits_net.training  # restored
    digits_net.eval()
    assert torch.allclose(extract_features(digits_net, images, batch_size=16), whole, atol=1e-6)
    assert torch.allclose(extract_features(digits_net, images.numpy()), whole)


def test_input_errors(digits, digits_net):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        digits_net(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        train_feature_net(digits[0][:10], digits[1][:9])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        train_feature_net(torch.zeros(10, 8, 8), np.zeros(10))


@pytest.mark.parametrize(("size", "dim"), [(8, 128), (32, 256), (28, 256), (4, 64)])
def test_architecture_scales_with_resolution(size, dim):
    net = FeatureNet(3, (size, size), num_classes=10)
    assert net(torch.zeros(2, 3, size, size)).shape == (2, dim) and net.feature_dim == dim
