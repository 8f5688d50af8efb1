"""Rerunning a study reuses a run folder only for the settings it was made with."""

from __future__ import annotations

import json

import pytest
import torch

from normlab.cli import main
from normlab.gan.checkpoint import list_checkpoints, load_checkpoint
from normlab.gan.config import TrainConfig
from normlab.study.compare import run_study
from normlab.study.reuse import ConfigMismatch

pytestmark = pytest.mark.slow  # several tiny trainings each (seconds, more on a busy machine)

TINY = TrainConfig(data="ring8", steps=6, log_every=2, eval_every=0, ckpt_every=0, width=8)
TINY = TINY.replace(eval_samples=200, depth=1)


def _final_state(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def test_other_settings_are_refused_before_training_then_rerun_on_request(tmp_path):
    out = tmp_path / "study"
    first = run_study(TINY, ["sn"], [0], out, workers=1)
    metrics_file = out / "runs" / "sn" / "seed0" / "metrics.json"
    written = metrics_file.stat().st_mtime_ns
    changed = TINY.replace(lr_d=1e-3, width=16)
    with pytest.raises(ConfigMismatch) as info:
        run_study(changed, ["sn"], [0], out, workers=1)
    msg = str(info.value)
    assert "sn seed 0" in msg and str(out / "runs" / "sn" / "seed0") in msg
    assert "lr_d: run has 0.0002, asked 0.001" in msg and "width: run has 8, asked 16" in msg
    assert "--out" in msg and "--rerun-changed" in msg
    assert metrics_file.stat().st_mtime_ns == written  # nothing trained
    assert json.loads((out / "results.json").read_text())[0]["config"]["lr_d"] == 2e-4

    again = run_study(changed, ["sn"], [0], out, workers=1, rerun_changed=True)
    assert not again[0]["reused"] and again[0]["status"] == "finished"
    stored = json.loads((out / "results.json").read_text())[0]["config"]
    assert (stored["lr_d"], stored["width"]) == (1e-3, 16)
    assert "lr_d: 0.001" in (out / "runs" / "sn" / "seed0" / "config.yaml").read_text()
    trained = _final_state(again[0]["run_dir"])  # trained anew, with the settings asked
    assert trained["config"]["lr_d"] == 1e-3 and trained["config"]["width"] == 16
    assert first[0]["wall_time"] != again[0]["wall_time"]


def test_more_steps_continue_the_run_and_fewer_are_refused(tmp_path):
    out = tmp_path / "study"
    run_study(TINY, ["sn"], [0], out, workers=1)
    longer = run_study(TINY.replace(steps=9), ["sn"], [0], out, workers=1)
    rec = longer[0]
    assert rec["resumed"] and not rec["reused"] and rec["steps"] == 9
    assert rec["config"]["steps"] == 9
    assert json.loads((out / "results.json").read_text())[0]["steps"] == 9
    report = (out / "report.md").read_text()
    assert '"steps": 9' in report
    # Continued from step 6, it ends where a 9-step run that never stopped ends.
    straight = run_study(TINY.replace(steps=9), ["sn"], [0], tmp_path / "straight", workers=1)
    a = _final_state(rec["run_dir"])
    b = _final_state(straight[0]["run_dir"])
    assert a["step"] == b["step"] == 9
    for key in ("G", "D"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    with pytest.raises(ConfigMismatch, match="steps: run has 9, asked 6"):
        run_study(TINY, ["sn"], [0], out, workers=1)


def test_settings_that_change_nothing_reuse_and_report_what_ran(tmp_path):
    out = tmp_path / "study"
    run_study(TINY, ["sn"], [0], out, workers=1)
    again = run_study(TINY.replace(log_every=3, ckpt_every=5), ["sn"], [0], out, workers=1)
    assert again[0]["reused"]
    assert again[0]["config"]["log_every"] == 2  # the run's own config, not the one asked


def test_the_command_line_shows_the_refusal(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["compare", "--methods", "sn", "--seeds", "1", "--workers", "1", "--out", str(out)]
    args += ["--no-progress", "--set", "width=8", "--set", "depth=1", "--set", "eval_every=0"]
    args += ["--set", "eval_samples=200"]
    assert main([*args, "--steps", "4"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--set", "lr_g=0.001"]) == 1
    err = capsys.readouterr().err
    print(err)
    assert err.startswith("normlab compare: error: ")
    default_lr_g = TrainConfig.preset("ring8").lr_g  # the ring8 preset's
    assert f"lr_g: run has {default_lr_g!r}, asked 0.001" in err and "--rerun-changed" in err
    assert main([*args, "--steps", "4", "--set", "lr_g=0.001", "--rerun-changed"]) == 0
    assert "training again: sn seed 0 (lr_g" in capsys.readouterr().out
