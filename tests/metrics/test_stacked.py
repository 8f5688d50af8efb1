"""The stacked-digits mode counter against independent computations (scipy's entropy, the true
digit labels of the images, a plain loop over the held-out digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from normlab.data import digit_split, stacked_digits
from normlab.data.stacked import mode_index
from normlab.metrics import (
    MIN_CLASSIFIER_ACCURACY,
    NUM_STACKED_EVAL_SAMPLES,
    StackedDigitFeatures,
    digit_classifier,
    stacked_digits_metrics,
)
from normlab.metrics.stacked import (
    classify_stacked,
    load_digit_classifier,
    train_digit_classifier,
    triple_kl,
)

pytestmark = pytest.mark.slow  # the classifier trains once per session (~30 s of CPU)


@pytest.fixture(scope="module")
def net(digit_classifier_cache):
    return digit_classifier(digit_classifier_cache)


def test_classifier_heldout_accuracy_is_at_least_97_percent(net, digit_classifier_cache):
    x, y = digit_split("heldout")
    correct = 0
    with torch.no_grad():
        for img, label in zip(torch.from_numpy(x), y):  # one digit at a time, plain loop
            correct += int(net.logits(img[None]).argmax().item() == label)
    accuracy = correct / len(y)
    assert accuracy >= MIN_CLASSIFIER_ACCURACY
    assert net.heldout_accuracy == pytest.approx(accuracy, abs=1e-12)
    cached, fingerprint = load_digit_classifier(digit_classifier_cache)
    assert fingerprint and cached.heldout_accuracy == net.heldout_accuracy
    assert all(
        torch.equal(a, b) for a, b in zip(cached.state_dict().values(), net.state_dict().values())
    )


def test_classifier_training_is_deterministic():
    a = train_digit_classifier(epochs=1)
    b = train_digit_classifier(epochs=1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_real_stacked_samples_cover_all_modes_with_kl_near_zero(net):
    # Held-out digits: the classifier never saw them, so this also measures its errors' effect.
    images, triples = stacked_digits(NUM_STACKED_EVAL_SAMPLES, seed=5, split="heldout")
    m = stacked_digits_metrics(images, classifier=net)
    true_modes = mode_index(triples)
    assert np.unique(true_modes).size == 1000  # the data themselves cover every mode
    true_kl = entropy(np.bincount(true_modes, minlength=1000), np.full(1000, 1e-3))
    assert m["modes_covered"] >= 995
    assert m["kl"] < 0.05 and abs(m["kl"] - true_kl) < 0.02
    assert m["classifier_accuracy"] == net.heldout_accuracy


def test_a_generator_collapsed_onto_one_triple_scores_one_mode_and_log_1000(net):
    image, _ = stacked_digits(1, seed=11)
    collapsed = torch.from_numpy(image).repeat(2000, 1, 1, 1)
    collapsed += 0.01 * torch.randn_like(collapsed)  # a little noise, as a generator would have
    m = stacked_digits_metrics(collapsed.clamp(-1, 1), classifier=net)
    assert m["modes_covered"] == 1
    assert m["kl"] == pytest.approx(math.log(1000), abs=1e-9)


def test_ten_equally_used_triples_give_ten_modes_and_log_100(net):
    x, d = stacked_digits(400, seed=2)
    predicted = classify_stacked(x, net).numpy()
    picks, seen = [], set()
    for img, truth, pred in zip(x, d, predicted):
        mode = int(mode_index(truth[None])[0])
        if np.array_equal(truth, pred) and mode not in seen:  # classified right, a new triple
            seen.add(mode)
            picks.append(img)
    images = torch.from_numpy(np.stack(picks[:10])).repeat(50, 1, 1, 1)
    m = stacked_digits_metrics(images, classifier=net)
    assert m["modes_covered"] == 10
    assert m["kl"] == pytest.approx(math.log(100), abs=1e-9)


def test_triple_kl_matches_scipy():
    rng = np.random.default_rng(0)
    modes = rng.integers(0, 37, size=5000)
    counts = np.bincount(modes, minlength=1000)
    assert triple_kl(torch.from_numpy(modes)) == pytest.approx(
        entropy(counts, np.full(1000, 1e-3)), rel=1e-12
    )


def test_upscaled_images_are_counted_like_the_8x8_ones(net):
    x, _ = stacked_digits(300, seed=4)
    t = torch.from_numpy(x)
    up = F.interpolate(t, size=(16, 16), mode="bilinear", antialias=True).clamp(-1, 1)
    a = stacked_digits_metrics(t, classifier=net)
    b = stacked_digits_metrics(up, classifier=net)
    assert abs(a["modes_covered"] - b["modes_covered"]) <= 10


def test_features_are_the_classifier_features_of_each_channel(net):
    x, _ = stacked_digits(7, seed=6)
    t = torch.from_numpy(x)
    features = StackedDigitFeatures(net)
    feats = features(t)
    features.train()  # as extract_features restores a caller's mode: the classifier stays frozen
    assert not net.training
    assert feats.shape == (7, 3 * net.feature_dim)
    for c in range(3):
        own = net(t[:, c : c + 1])
        assert torch.allclose(feats[:, c * net.feature_dim : (c + 1) * net.feature_dim], own)


def test_bad_images_are_refused(net):
    with pytest.raises(ValueError, match=r"shape \(N, 3, r, r\), got \(4, 1, 8, 8\)"):
        stacked_digits_metrics(torch.zeros(4, 1, 8, 8), classifier=net)
    bad = torch.zeros(4, 3, 8, 8)
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 of 4 images hold NaN or inf"):
        stacked_digits_metrics(bad, classifier=net)
