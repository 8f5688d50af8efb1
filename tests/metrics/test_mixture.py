"""Mixture metrics against hand-built sample sets."""

import math

import pytest
import torch

from normlab.data.mixtures import GRID25, QUALITY_STDS, RING8
from normlab.metrics import NUM_EVAL_SAMPLES, mixture_metrics, mode_assignments


def on_modes(spec, counts):
    """``counts[k]`` samples exactly on mode k."""
    means = spec.means_tensor()
    return torch.cat([means[k].repeat(c, 1) for k, c in enumerate(counts)])


@pytest.mark.parametrize("spec", [RING8, GRID25])
def test_all_samples_on_modes_cover_everything(spec):
    m = mixture_metrics(on_modes(spec, [3] * spec.num_modes), spec)
    assert m == {"modes_covered": spec.num_modes, "high_quality_frac": 1.0, "reverse_kl": 0.0}
    assert isinstance(m["modes_covered"], int)


@pytest.mark.parametrize("spec", [RING8, GRID25])
def test_samples_from_the_mixture(spec):
    x = spec.sample(NUM_EVAL_SAMPLES, generator=torch.Generator().manual_seed(0))
    m = mixture_metrics(x, spec)
    assert m["modes_covered"] == spec.num_modes
    # ||noise|| / std is chi with 2 dof: P(chi^2_2 <= 9) = 1 - exp(-4.5) = 0.98889
    assert m["high_quality_frac"] == pytest.approx(1 - math.exp(-(QUALITY_STDS**2) / 2), abs=0.006)
    assert 0 <= m["reverse_kl"] < 0.02


def test_off_mode_samples_are_not_high_quality():
    x = torch.zeros(100, 2)  # the ring's centre: distance 1 = 100 std from every mode
    m = mixture_metrics(x, RING8)
    assert m["modes_covered"] == 0
    assert m["high_quality_frac"] == 0.0
    assert m["reverse_kl"] == pytest.approx(math.log(8))  # documented: no HQ sample -> log K


@pytest.mark.parametrize("spec", [RING8, GRID25])
def test_one_mode_only(spec):
    m = mixture_metrics(on_modes(spec, [0] * (spec.num_modes - 1) + [50]), spec)
    assert m["modes_covered"] == 1
    assert m["high_quality_frac"] == 1.0
    assert m["reverse_kl"] == pytest.approx(math.log(spec.num_modes))


def test_reverse_kl_by_hand():
    # two of eight modes, 3:1 -> q = (3/4, 1/4, 0, ...): KL = 3/4 log(6) + 1/4 log(2)
    m = mixture_metrics(on_modes(RING8, [30, 10, 0, 0, 0, 0, 0, 0]), RING8)
    assert m["modes_covered"] == 2
    assert m["reverse_kl"] == pytest.approx(0.75 * math.log(6) + 0.25 * math.log(2), rel=1e-12)
    # half the modes, evenly: log 2
    m = mixture_metrics(on_modes(RING8, [5, 0] * 4), RING8)
    assert m["modes_covered"] == 4
    assert m["reverse_kl"] == pytest.approx(math.log(2), rel=1e-12)


def test_low_quality_samples_count_only_in_the_fraction():
    hq = on_modes(RING8, [10] * 8)  # 80 on modes
    lq = torch.zeros(20, 2)  # 20 off
    m = mixture_metrics(torch.cat([hq, lq]), RING8)
    assert m == {"modes_covered": 8, "high_quality_frac": 0.8, "reverse_kl": 0.0}


def test_three_std_boundary():
    s = RING8.std
    x = torch.tensor([[1 + 2.99 * s, 0.0], [1 + 3.01 * s, 0.0], [0.0, 1 - 2.5 * s]])
    nearest, hq = mode_assignments(x, RING8)
    assert hq.tolist() == [True, False, True]
    assert nearest[0] == 0 and nearest[2] == 2  # (0, 1) is mode k=2
    m = mixture_metrics(x, RING8)
    assert m["modes_covered"] == 2 and m["high_quality_frac"] == pytest.approx(2 / 3)


def test_non_finite_samples_are_low_quality():
    x = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [float("inf"), 1.0]])
    m = mixture_metrics(x, RING8)
    assert m["modes_covered"] == 1 and m["high_quality_frac"] == pytest.approx(1 / 3)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        mixture_metrics(torch.zeros(10, 3), RING8)
    with pytest.raises(ValueError, match="at least one"):
        mixture_metrics(torch.zeros(0, 2), RING8)
