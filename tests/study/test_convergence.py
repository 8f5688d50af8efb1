"""The converged verdict of a run's last evaluations."""

import json

import pytest

from normlab.study.convergence import check, check_run, runs_section


def _hist(key, values):
    return [{"step": 100 * (i + 1), key: v} for i, v in enumerate(values)]


def test_flat_rising_and_short_histories():
    assert check(_hist("high_quality_frac", [0.1, 0.9, 0.91, 0.9]))["converged"] is True
    rising = check(_hist("high_quality_frac", [0.1, 0.2, 0.3, 0.4]))
    assert rising["converged"] is False and rising["steps"] == [200, 300, 400]
    # range 0.2 > tolerance 0.05 * 0.3 + 0.02
    m = rising["metrics"]["high_quality_frac"]
    assert m["range"] == pytest.approx(0.2) and m["tolerance"] == pytest.approx(0.035)
    assert check(_hist("high_quality_frac", [0.9, 0.9]))["converged"] is None


def test_tolerance_edges():
    # fid 100 +- 2.5: range 5 = 5% of 100 (no floor for fid): settled; 5.2 is not
    assert check(_hist("fid", [97.5, 102.5, 100.0]))["converged"] is True
    assert check(_hist("fid", [97.4, 102.6, 100.0]))["converged"] is False
    # 8 ring modes: any change over the window is too much; 25 grid modes may move by one
    assert check(_hist("modes_covered", [8, 7, 8]))["converged"] is False
    assert check(_hist("modes_covered", [24, 25, 25]))["converged"] is True
    assert check(_hist("reverse_kl", [0.1, float("nan"), 0.1]))["converged"] is False
    with pytest.raises(ValueError, match="window must be at least 2"):
        check([], window=1)


def test_every_metric_must_settle():
    hist = [
        {"step": s, "modes_covered": 8, "high_quality_frac": h}
        for s, h in [(1, 0.5), (2, 0.6), (3, 0.7)]
    ]
    out = check(hist)
    assert out["converged"] is False
    assert out["metrics"]["modes_covered"]["settled"] is True
    assert out["metrics"]["high_quality_frac"]["settled"] is False


def test_run_folder_and_table(tmp_path):
    hist = _hist("high_quality_frac", [0.5, 0.95, 0.96, 0.95])
    (tmp_path / "metrics.json").write_text(json.dumps({"history": hist}))
    assert check_run(tmp_path)["converged"] is True
    assert check_run(tmp_path / "missing")["converged"] is None
    rec = {
        "group": "sn",
        "seed": 0,
        "status": "finished",
        "metrics": {"high_quality_frac": 0.95},
        "converged": True,
        "convergence": check_run(tmp_path),
    }
    text = "\n".join(runs_section([rec], ["high_quality_frac"]))
    assert "| sn | 0 | finished | yes | 200-400 | 0.95 |" in text
    assert "1 of 1 runs converged" in text
