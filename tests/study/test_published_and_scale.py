"""PacGAN's published rows beside a study, and the scale-sweep figure."""

import math

import pytest

from normlab.study.published import PUBLISHED, mean_and_se, published_section
from normlab.study.report import write_report
from normlab.study.scale_plot import is_scale_sweep, plot_scale_sweep, scale_curves

CONFIG = {
    "data": "ring8",
    "steps": 300,
    "n_dis": 2,
    "batch_size": 64,
    "loss": "hinge",
    "lr_d": 5e-4,
    "lr_g": 2e-4,
    "beta1": 0.5,
    "beta2": 0.9,
    "eval_samples": 2500,
    "pack": 1,
    "ema": 0.0,
}


def _rec(method, seed, scale, modes, hq, tmp_path, status="finished"):
    group = method if scale is None else f"{method}@{scale:g}"
    return {
        "group": group,
        "method": method,
        "seed": seed,
        "scale": scale,
        "status": status,
        "metrics": {"modes_covered": modes, "high_quality_frac": hq, "reverse_kl": 0.1},
        "run_dir": str(tmp_path / group / str(seed)),
        "config": {**CONFIG, "method": method, "seed": seed, "scale": scale},
    }


def test_published_rows_are_pacgans_table_1():
    ring, grid = PUBLISHED["ring8"].rows, PUBLISHED["grid25"].rows
    assert list(ring) == ["GAN", "PacGAN2", "PacGAN3", "PacGAN4"]
    assert ring["GAN"]["modes_covered"] == (6.3, 0.5)
    assert ring["GAN"]["high_quality_frac"] == (0.982, 0.002)
    assert grid["PacGAN4"]["reverse_kl"] == (0.04, 0.01)


def test_published_section_sets_the_study_beside_the_paper(tmp_path):
    recs = [_rec("sn", s, None, m, h, tmp_path) for s, m, h in [(0, 8, 0.5), (1, 6, 0.7)]]
    text = "\n".join(published_section(recs))
    assert "| published | GAN | 10 | 6.3 ± 0.5 | 98.2% ± 0.2% | 0.45 ± 0.09 |" in text
    # this study: mean 7, se = std / sqrt(2) = sqrt(2) / sqrt(2) = 1; hq 60% ± 10%
    assert "| this study | sn | 2 | 7 ± 1 | 60% ± 10% | 0.1 ± 0 |" in text
    assert "400,000 steps" in text and "2 seeds per row; 300 G steps x 2 D step(s)" in text
    other = [{**recs[0], "config": {**CONFIG, "data": "digits"}}]
    assert published_section(other) == []
    n, mean, se = mean_and_se([1.0, 2.0, None, float("nan"), 3.0])
    assert (n, mean) == (3, 2.0) and se == pytest.approx(1 / math.sqrt(3))


def test_scale_curves_and_figure(tmp_path):
    recs = []
    for c, modes in [(0.5, [8, 8, 7]), (1.0, [8, 6, 7]), (2.0, [1, 2, 1])]:
        for s, m in enumerate(modes):
            recs.append(_rec("bssn", s, c, m, 0.1 * c, tmp_path))
    recs += [_rec("sn", s, None, 8 - s, 0.3, tmp_path) for s in range(3)]
    assert is_scale_sweep(recs) and not is_scale_sweep(recs[-3:])
    curves = scale_curves(recs, "modes_covered")
    assert [c for c, *_ in curves["bssn"]] == [0.5, 1.0, 2.0]
    c, mean, low, high = curves["bssn"][1]
    # seeds (8, 6, 7): mean 7; the band is the report's interval (bootstrap percentile), which
    # stays inside the values seen (a t-interval would be 7 +- 2.48) and is symmetric here.
    assert mean == pytest.approx(7.0) and 6.0 <= low < mean < high <= 8.0
    assert mean - low == pytest.approx(high - mean)
    png = plot_scale_sweep(recs, ["modes_covered", "high_quality_frac"], tmp_path)
    assert png is not None and png.stat().st_size > 5000
    assert plot_scale_sweep(recs[-3:], ["modes_covered"], tmp_path / "x") is None


def test_report_shows_every_new_section(tmp_path):
    recs = []
    for c in (1.0, 2.0):
        recs += [_rec("ssn", s, c, 8 - s, 0.2 * c + 0.01 * s, tmp_path) for s in range(3)]
    recs += [_rec("sn", s, None, 8, 0.1 + 0.02 * s, tmp_path) for s in range(3)]
    for r in recs:
        r["converged"], r["convergence"] = None, {"steps": []}
    report = write_report(recs, tmp_path, command="normlab compare").read_text()
    for heading in ("## Published results (ring8)", "## Paired differences", "## Runs"):
        assert heading in report
    assert "](scale_sweep.png)" in report and (tmp_path / "scale_sweep.png").is_file()


def test_a_study_without_a_sweep_says_where_the_scale_figure_is(tmp_path):
    """The default study runs bssn at one c: its report names the sweep that draws the knob;
    a swept study, and one with no scaled method, do not get the note."""
    from normlab.gan.config import TrainConfig
    from normlab.study.compare import scale_note

    base = TrainConfig.preset("ring8")
    demo = [_rec(m, s, None, 8, 0.8, tmp_path) for m in ("none", "sn", "bssn") for s in range(3)]
    note = scale_note(base, demo)
    assert note is not None
    assert "bssn ran at one c here (c = 1.2)" in note
    assert "--methods ssn,bssn --scale 0.5,1,1.5,2,3" in note
    assert "c = 2" in scale_note(base.replace(method="bssn", scale=2.0), demo)
    swept = [_rec("bssn", s, c, 8, 0.8, tmp_path) for c in (1.0, 2.0) for s in range(3)]
    assert scale_note(base, swept) is None
    assert scale_note(base, [r for r in demo if r["method"] != "bssn"]) is None


def test_a_method_whose_values_equal_anothers_says_so_in_the_legend(tmp_path):
    """SSN and BSSN read the same sigma on an MLP: identical lines, one hidden under the other
    unless the legend says so."""
    from normlab.study.scale_plot import _labels

    recs = []
    for method in ("ssn", "bssn"):
        for c, modes in [(1.0, [8, 7, 8]), (2.0, [2, 1, 2])]:
            recs += [_rec(method, s, c, m, 0.3 * c, tmp_path) for s, m in enumerate(modes)]
    metrics = ["modes_covered", "high_quality_frac"]
    curves = {m: scale_curves(recs, m) for m in metrics}
    assert _labels(curves) == {"ssn": "ssn", "bssn": "bssn (= ssn)"}
    recs[-1]["metrics"]["high_quality_frac"] += 0.01  # one value of one panel differs
    curves = {m: scale_curves(recs, m) for m in metrics}
    assert _labels(curves) == {"ssn": "ssn", "bssn": "bssn"}
    assert plot_scale_sweep(recs, metrics, tmp_path) is not None
