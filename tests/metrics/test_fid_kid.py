"""FID and KID against known answers computed independently here (numpy / scipy)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from normlab.metrics import IMAGE_METRICS, fid, image_metrics, kid


def gaussian(n, mean, cov, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=n)


def closed_form_fid(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the square root by scipy's sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_identical_sets_is_zero():
    x = gaussian(500, np.zeros(16), random_cov(16, 0), seed=1)
    assert abs(fid(x, x)) < 1e-8
    assert abs(fid(torch.from_numpy(x).float(), torch.from_numpy(x).float())) < 1e-5


def test_fid_matches_closed_form_on_the_sample_statistics():
    d = 8
    real = gaussian(2000, np.zeros(d), random_cov(d, 2), seed=3)
    fake = gaussian(1500, np.full(d, 0.5), random_cov(d, 4), seed=5)
    expected = closed_form_fid(
        real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)
    )
    assert fid(real, fake) == pytest.approx(expected, rel=1e-9)
    assert fid(fake, real) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_fid_of_shifted_gaussians_approaches_the_population_value():
    d = 3
    mu1, mu2 = np.zeros(d), np.array([1.0, -2.0, 0.5])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), random_cov(d, 6)
    expected = closed_form_fid(mu1, s1, mu2, s2)
    value = fid(gaussian(20000, mu1, s1, seed=7), gaussian(20000, mu2, s2, seed=8))
    assert value == pytest.approx(expected, rel=0.02)
    # pure shift, equal covariances: FID = ||mu1 - mu2||^2 exactly (population)
    iso = fid(gaussian(20000, mu1, s1, 9), gaussian(20000, mu2, s1, 10))
    assert iso == pytest.approx(float((mu2**2).sum()), rel=0.02)


def direct_unbiased_mmd2(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out from its definition."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_matches_a_direct_unbiased_mmd():
    x = gaussian(300, np.zeros(10), np.eye(10), seed=11)
    y = gaussian(300, np.full(10, 0.3), 1.5 * np.eye(10), seed=12)
    # one subset of all samples: only a permutation, which the unbiased MMD does not see
    assert kid(x, y, subsets=1, subset_size=300) == pytest.approx(
        direct_unbiased_mmd2(x, y), rel=1e-10
    )
    # oversized subsets are clamped to the sample count
    assert kid(x, y, subsets=1, subset_size=10_000) == pytest.approx(
        direct_unbiased_mmd2(x, y), rel=1e-10
    )


def test_kid_identical_and_subsets_reproducible():
    x = gaussian(600, np.zeros(6), np.eye(6), seed=13)
    y = gaussian(600, np.full(6, 0.5), np.eye(6), seed=14)
    shifted = kid(x, y, subset_size=200, subsets=20)
    assert shifted > 0.05
    # identical sets, all samples: the unbiased estimate is O(1/n) from 0
    same = kid(x, x, subset_size=600, subsets=1)
    assert same == pytest.approx(direct_unbiased_mmd2(x, x), rel=1e-10)
    assert abs(same) < 0.05 * shifted
    # independent samples of one distribution: unbiased, so about 0 on subsets too
    z = gaussian(600, np.zeros(6), np.eye(6), seed=15)
    assert abs(kid(x, z, subset_size=600, subsets=1)) < 0.02 * shifted
    assert abs(kid(x, z, subset_size=200, subsets=100)) < 0.02 * shifted
    state = torch.get_rng_state()
    a = kid(x, y, subset_size=200, subsets=20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a == kid(x, y, subset_size=200, subsets=20, seed=3)
    assert a != kid(x, y, subset_size=200, subsets=20, seed=4)
    mean, std = kid(x, y, subset_size=200, subsets=20, seed=3, return_std=True)
    assert mean == a and std > 0


def test_image_metrics_keys_and_identical_sets():
    x = torch.randn(400, 12, generator=torch.Generator().manual_seed(0))
    m = image_metrics(x, x, kid_subset_size=100, kid_subsets=5)
    assert tuple(m) == IMAGE_METRICS
    assert all(isinstance(v, float) for v in m.values())
    assert abs(m["fid"]) < 1e-6 and abs(m["kid"]) < 0.1  # KID of a set with itself: O(1/n)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    # 1 up to the k-th neighbour on a ball's edge, which rounding may count in (test_prdc.py)
    assert m["density"] == pytest.approx(1.0, abs=0.01)


def test_input_errors():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="dimension"):
        fid(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        kid(x, torch.full((10, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        fid(torch.randn(10), x)
    with pytest.raises(ValueError, match="at least 2"):
        fid(x[:1], x)


@pytest.mark.parametrize("full_kernel_max", [10_000, 10])  # kernels formed once / per subset
def test_kid_equals_torchmetrics_compute_on_the_same_subsets(monkeypatch, full_kernel_max):
    """Both routes give torchmetrics' own KernelInceptionDistance.compute, fed the features and
    seeded the same way (same subsets), mean and std."""
    from torchmetrics.image.kid import KernelInceptionDistance

    import normlab.metrics.kid_score as kid_score
    from normlab.metrics._tm import PrecomputedFeatures

    monkeypatch.setattr(kid_score, "FULL_KERNEL_MAX_SAMPLES", full_kernel_max)
    x = torch.from_numpy(gaussian(250, np.zeros(7), np.eye(7), seed=21))
    y = torch.from_numpy(gaussian(230, np.full(7, 0.2), 1.3 * np.eye(7), seed=22))
    metric = KernelInceptionDistance(PrecomputedFeatures(7), subsets=12, subset_size=90)
    metric.update(x, real=True)
    metric.update(y, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        want_mean, want_std = (float(v) for v in metric.compute())
    mean, std = kid(x, y, subset_size=90, subsets=12, seed=5, return_std=True)
    assert mean == pytest.approx(want_mean, rel=1e-10)
    assert std == pytest.approx(want_std, rel=1e-8)
    assert want_std > 0  # the subsets differ: a wrong draw order would not match
