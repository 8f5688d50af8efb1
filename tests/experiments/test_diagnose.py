"""``normlab diagnose``: the study's files, and Lin et al.'s claims on its numbers.

One module-scoped short run (none, sn, sn_exact; 150 steps, width 16; about 25 s of one
core) serves the claims, marked slow.
What holds at this size (8x8 digits, a small standard CNN) and what does not is asserted
as measured; see the claims in the test names.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from normlab.cli import main
from normlab.experiments.diagnose import DiagnoseConfig, diagnose, lr_bound_study

FIGURES = {"grad_norms.png", "grad_over_steps.png", "sigma.png", "input_grad.png", "lipschitz.png"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("diagnose")
    cfg = DiagnoseConfig(methods=("none", "sn", "sn_exact"), steps=150, every=10, width=16)
    result = diagnose(out, cfg)
    return out, result


@pytest.mark.slow
def test_files_and_record_names(study) -> None:
    out, _ = study
    assert FIGURES <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "diagnose.json").read_text())
    assert set(saved["methods"]) == {"none", "sn", "sn_exact"}
    recs = saved["methods"]["sn"]["records"]
    assert [r["step"] for r in recs] == list(range(0, 151, 10))
    layer = recs[-1]["layers"]["features.0"]
    assert {"sigma", "op_norm", "weight_grad_norm", "std_sqrt_fan_in"} <= set(layer)
    assert {"loss_d", "grad_x_real_mean", "grad_x_fake_max", "lipschitz_bound"} <= set(recs[-1])


@pytest.mark.slow
def test_unnormalized_gradients_spread_or_grow_and_sn_keeps_a_narrow_band(study) -> None:
    s = {m: r["summary"] for m, r in study[1]["methods"].items()}
    none, sn = s["none"], s["sn"]
    # Without SN: the layers' gradient norms spread over more than an order of magnitude
    # (median over training), and the Lipschitz bound grows by over two orders.
    assert none["grad_spread"] > 20
    assert none["bound_growth"] > 100
    # SN: a band about three times narrower, the bound grows about ten times less.
    assert sn["grad_spread"] < none["grad_spread"] / 2
    assert sn["bound_max"] < none["bound_max"] / 2
    assert none["grad_max"] > sn["grad_max"]


@pytest.mark.slow
def test_exact_sn_shrinks_the_first_layers_gradients_more_than_sn(study) -> None:
    s = {m: r["summary"] for m, r in study[1]["methods"].items()}
    # Over training (the mean of the records after step 0).
    assert s["sn_exact"]["first_layers_grad"] < s["sn"]["first_layers_grad"] / 2
    # Exact SN also makes the whole network flatter.
    assert s["sn_exact"]["max_input_grad"] < s["sn"]["max_input_grad"]


@pytest.mark.slow
def test_measured_input_gradient_never_exceeds_the_lipschitz_bound(study) -> None:
    for method, run in study[1]["methods"].items():
        assert run["summary"]["bound_holds"], method
        for r in run["records"]:
            measured = max(r["grad_x_real_max"], r["grad_x_fake_max"])
            assert measured <= r["lipschitz_bound"], (method, r["step"])


def test_cli_smoke(tmp_path, capsys) -> None:
    rc = main(
        [
            "diagnose",
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--every",
            "1",
            "--width",
            "4",
            "--methods",
            "bsn,eqlr",
            "--quiet",
            "--no-figures",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bsn" in printed and "eqlr" in printed
    saved = json.loads((tmp_path / "diagnose.json").read_text())
    assert [r["step"] for r in saved["methods"]["bsn"]["records"]] == [0, 1, 2]
    assert "sigma_t" in saved["methods"]["bsn"]["records"][0]["layers"]["features.0"]


def test_cli_rejects_unknown_method(tmp_path, capsys) -> None:
    assert main(["diagnose", "--out", str(tmp_path), "--methods", "sn,nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_lr_bound_study_small() -> None:
    r = lr_bound_study(names=("mlp",), steps=40, n_samples=128, resolution=2.0)
    m = r["models"]["mlp"]
    assert m["lr_estimate"] == pytest.approx(3.8 / m["lambda_max"])
    assert m["largest_stable"] < m["smallest_diverging"] <= 2.0 * m["largest_stable"]
    assert m["threshold"] == pytest.approx(math.sqrt(m["largest_stable"] * m["smallest_diverging"]))
    stable = [p for p in m["sweep"] if not p["diverged"]]
    assert all(p["lr"] <= m["largest_stable"] for p in stable)
    assert m["lambda_final"] > 0
