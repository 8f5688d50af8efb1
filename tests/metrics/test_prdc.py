"""PRDC against the reference implementation's definitions and its published N(0, I) example."""

import numpy as np
import pytest
import torch

import normlab.metrics.prdc_score as prdc_module
from normlab.metrics import prdc


def reference_prdc(real, fake, k):
    """A numpy port of clovaai/generative-evaluation-prdc's compute_prdc (full matrices)."""

    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def kth(a):  # k-th neighbour excluding itself = (k+1)-th smallest including the 0
        return np.sort(dists(a, a), axis=1)[:, k]

    r_real, r_fake, d = kth(real), kth(fake), dists(real, fake)
    return {
        "precision": (d < r_real[:, None]).any(axis=0).mean(),
        "recall": (d < r_fake[None, :]).any(axis=1).mean(),
        "density": (d < r_real[:, None]).sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) < r_real).mean(),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_the_reference_definitions(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(loc=0.3, scale=1.3, size=(250, 5))
    got, want = prdc(real, fake, k=k), reference_prdc(real, fake, k)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(333, 4)), rng.normal(size=(271, 4)) + 0.2
    whole = prdc(real, fake)
    monkeypatch.setattr(prdc_module, "CHUNK_ROWS", 50)
    assert prdc(real, fake) == whole


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(3)
    real = rng.normal(loc=50.0, size=(2000, 64))  # far from the origin: centring matters
    fake = rng.normal(loc=50.2, size=(1500, 64))
    m64, m32 = prdc(real, fake), prdc(real, fake, dtype=torch.float32)
    for key in m64:
        assert m32[key] == pytest.approx(m64[key], abs=2e-3), key


def test_identical_sets():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    # Each ball B(x_i, NND_k(x_i)) holds x_i and its k-1 nearest: density 1, up to the k-th
    # neighbour on the ball's edge, which rounding (the CPU's matmul kernels) may count in:
    # at most one extra point per ball, density <= (k + 1) / k.
    m = prdc(x, x, k=5)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert 1.0 <= m["density"] <= 1.0 + 1 / 5 and m["density"] == pytest.approx(1.0, abs=0.01)


def test_disjoint_sets():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    assert prdc(x, x + 100.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.slow
def test_published_standard_normal_example():
    # README of clovaai/generative-evaluation-prdc: 10,000 real and 10,000 fake samples of
    # N(0, I) in 1000 dimensions, k = 5 -> precision 0.4772, recall 0.4705, density 1.0555,
    # coverage 0.9735 ("may fluctuate due to randomness").
    g = torch.Generator().manual_seed(0)
    real = torch.randn(10_000, 1000, generator=g)
    fake = torch.randn(10_000, 1000, generator=g)
    m = prdc(real, fake, k=5, dtype=torch.float32)  # float32: 2.5x faster, same counts
    assert m["precision"] == pytest.approx(0.4772, abs=0.03)
    assert m["recall"] == pytest.approx(0.4705, abs=0.03)
    assert m["density"] == pytest.approx(1.0555, abs=0.1)  # its expectation is exactly 1
    assert m["coverage"] == pytest.approx(0.9735, abs=0.02)


def test_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="at least 6"):
        prdc(torch.randn(5, 2), torch.randn(50, 2), k=5)
