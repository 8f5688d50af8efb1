"""The comparison study: grid, resume, failures, results.json and report.md."""

import json
from pathlib import Path

import pytest

from normlab.gan.config import TrainConfig
from normlab.study.compare import run_study
from normlab.study.grid import build_grid, parse_methods, parse_scales
from normlab.study.report import summary_table

TINY = TrainConfig(data="ring8", steps=30, log_every=10, eval_every=15, ckpt_every=15, width=16)


def test_grid_sweeps_scale_only_for_scaled_methods(tmp_path):
    runs = build_grid(TINY, ["sn", "bssn", "eqlr"], [0, 1], [0.8, 1.6], tmp_path)
    groups = [r.group for r in runs]
    assert groups == ["sn"] * 2 + ["bssn@0.8"] * 2 + ["bssn@1.6"] * 2 + ["eqlr"] * 2
    assert {r.config.scale for r in runs if r.method == "bssn"} == {0.8, 1.6}
    assert all(r.config.scale is None for r in runs if r.method != "bssn")
    assert len({r.run_dir for r in runs}) == len(runs)
    assert [r.config.seed for r in runs[:2]] == [0, 1]


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("sn,spectral")
    with pytest.raises(ValueError, match="twice"):
        parse_methods("sn,sn")
    with pytest.raises(ValueError, match="positive"):
        parse_scales("1.0,-2")
    with pytest.raises(ValueError, match="numbers"):
        parse_scales("big")


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "study"
    seen = []
    records = run_study(TINY, ["none", "sn"], [0, 1], out, workers=2, on_result=seen.append)
    assert len(records) == 4 and len(seen) == 4
    assert [(r["method"], r["seed"]) for r in records] == [
        ("none", 0),
        ("none", 1),
        ("sn", 0),
        ("sn", 1),
    ]
    for r in records:
        assert r["status"] == "finished"
        assert set(r["metrics"]) == {"modes_covered", "high_quality_frac", "reverse_kl"}
        assert r["wall_time"] > 0
        assert Path(r["run_dir"], "metrics.json").is_file()
    stored = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"], r["metrics"]) for r in stored] == [
        (r["method"], r["seed"], r["metrics"]) for r in records
    ]
    report = (out / "report.md").read_text()
    assert "| sn | 2 | 0 | 0 |" in report
    for png in (
        "samples.png",
        "final_metrics.png",
        "metrics_over_training.png",
        "d_input_gradients.png",
        "layer_sigmas.png",
    ):
        assert (out / png).stat().st_size > 5000, png
        assert f"]({png})" in report
    # Run again: nothing is retrained, the same numbers come back.
    again = run_study(TINY, ["none", "sn"], [0, 1], out, workers=2)
    assert all(r["reused"] for r in again)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in records]


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path):
    out = tmp_path / "study"
    # A run folder holding a config of another method makes that one run refuse to start.
    bad = build_grid(TINY, ["sn"], [0], None, out)[0].run_dir
    bad.mkdir(parents=True)
    (bad / "checkpoints").mkdir()
    (bad / "checkpoints" / "step_00000015.pt").write_bytes(b"not a checkpoint")
    records = run_study(TINY.replace(steps=10), ["sn", "none"], [0], out, workers=1)
    by_method = {r["method"]: r for r in records}
    assert by_method["none"]["status"] == "finished"
    assert by_method["sn"]["status"] == "failed"
    assert by_method["sn"]["error"]
    assert "Failed runs" in (out / "report.md").read_text()


def test_a_run_that_failed_before_its_first_checkpoint_starts_over(tmp_path):
    """Was a bug: a run that failed as it started left its config.yaml and no checkpoint, and
    every rerun of the study then failed it again ("already holds a run")."""
    out = tmp_path / "study"
    spec = build_grid(TINY, ["sn"], [0], None, out)[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text(spec.config.to_yaml())
    (spec.run_dir / "log.jsonl").write_text("")
    records = run_study(TINY, ["sn"], [0], out, workers=1)
    assert records[0]["status"] == "finished", records[0]["error"]
    assert not records[0]["resumed"]
    history = json.loads((spec.run_dir / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [15, 30]


def test_summary_table_counts_diverged_runs_apart():
    recs = [
        {"group": "sn", "status": "finished", "metrics": {"modes_covered": 8}},
        {"group": "sn", "status": "finished", "metrics": {"modes_covered": 6}},
        {"group": "none", "status": "diverged", "metrics": {"modes_covered": 1}},
        {"group": "none", "status": "finished", "metrics": {"modes_covered": 3}},
    ]
    table = summary_table(recs)
    assert "| sn | 2 | 0 | 0 | 7 ± 1.4" in table
    assert "| none | 2 | 1 | 0 | 3 (1 run) |" in table


@pytest.mark.slow
@pytest.mark.ddp
def test_compare_under_torchrun_trains_each_run_with_ddp(tmp_path):
    import sys

    from tests._net import free_port, run_command

    port = free_port()
    out = tmp_path / "study"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        "-m",
        "normlab",
        "compare",
        "--methods",
        "sn",
        "--seeds",
        "1",
        "--steps",
        "6",
        "--set",
        "width=8",
        "--set",
        "eval_every=0",
        "--set",
        "ckpt_every=0",
        "--set",
        "log_every=3",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = run_command(cmd, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("results:") == 1  # rank 0 alone reports
    records = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["status"]) for r in records] == [("sn", "finished")]


def test_the_pool_starts_the_longest_runs_first(tmp_path):
    import normlab as nl
    from normlab.study.runner import METHOD_COST, expected_cost, longest_first

    assert set(METHOD_COST) == set(nl.METHODS)  # a new method gets a deliberate cost
    base = TrainConfig.preset("ring8", steps=10)
    runs = build_grid(base, ["none", "sn", "bssn"], [0, 1], None, tmp_path)
    order = [(r.method, r.seed) for r in longest_first(runs)]
    assert order == [("bssn", 0), ("bssn", 1), ("sn", 0), ("sn", 1), ("none", 0), ("none", 1)]
    longer = build_grid(base.replace(steps=40), ["none"], [0], None, tmp_path / "b")[0]
    assert expected_cost(longer) > expected_cost(runs[-1])  # 4x the steps of a bssn run
    assert [r.method for r in longest_first([runs[0], longer])] == ["none", "none"]
    assert longest_first([runs[0], longer])[0] is longer
