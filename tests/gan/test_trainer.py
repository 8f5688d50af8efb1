"""train(): the run folder, logs, exact resume, divergence, every loss/arch, and learning at all."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from normlab.gan import trainer
from normlab.gan.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from normlab.gan.config import TrainConfig
from normlab.gan.trainer import train

from ._util import assert_identical, tiny, training_state

LOG_KEYS = {
    "step",
    "loss_d",
    "loss_g",
    "d_real",
    "d_fake",
    "layers",
    "lipschitz_bound",
    "grad_real_mean",
    "grad_real_min",
    "grad_real_max",
    "grad_fake_mean",
    "grad_fake_min",
    "grad_fake_max",
}


def test_run_folder_contents(tmp_path):
    out = train(tiny(), tmp_path, progress=False)
    assert out["status"] == "finished" and out["steps"] == 40 and out["divergence"] is None
    assert set(out["metrics"]) == {"modes_covered", "high_quality_frac", "reverse_kl"}
    assert out["wall_time"] > 0 and out["steps_per_sec"] > 0
    assert TrainConfig.from_file(tmp_path / "config.yaml") == tiny().resolved()
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [10, 20, 30, 40]
    assert LOG_KEYS <= set(recs[0])
    assert set(recs[0]["layers"]) == {"net.0", "net.2", "net.4", "net.6"}
    assert {"sigma", "weight_grad_norm", "std_sqrt_fan_in"} <= set(recs[0]["layers"]["net.0"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "finished" and [h["step"] for h in m["history"]] == [20, 40]
    assert m["final"] == out["metrics"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt", "step_00000040.pt"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    with Image.open(tmp_path / "samples" / "final.png") as im:
        assert im.size[0] > 100


def test_logging_does_not_change_training(tmp_path):
    a = train(tiny(log_every=1, eval_every=5), tmp_path / "a", progress=False)
    b = train(tiny(log_every=40, eval_every=0), tmp_path / "b", progress=False)
    assert a["metrics"] == b["metrics"]
    assert_identical(
        load_checkpoint(checkpoint_path(tmp_path / "a", 40))["D"],
        load_checkpoint(checkpoint_path(tmp_path / "b", 40))["D"],
    )


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"method": "bssn", "ema": 0.9, "n_dis": 2, "loss": "ns"},
        {"method": "wn", "loss": "wgan-gp"},
    ],
    ids=["sn", "bssn-ema-ndis-ns", "wn-wgangp"],
)
def test_resume_is_bit_identical(tmp_path, kw):
    train(tiny(steps=40, **kw), tmp_path / "ref", progress=False)
    first = train(tiny(steps=20, **kw), tmp_path / "run", progress=False)
    assert first["steps"] == 20
    out = train(tiny(steps=40, **kw), tmp_path / "run", resume=True, progress=False)
    assert out["steps"] == 40
    assert_identical(
        training_state(load_checkpoint(checkpoint_path(tmp_path / "run", 40))),
        training_state(load_checkpoint(checkpoint_path(tmp_path / "ref", 40))),
    )
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert steps == [10, 20, 30, 40]


def test_folder_and_resume_errors(tmp_path):
    train(tiny(steps=10), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a run; continue it with resume"):
        train(tiny(steps=10), tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot resume .* method: run has 'sn', asked 'bssn'"):
        train(tiny(steps=20, method="bssn"), tmp_path, resume=True, progress=False)
    # resuming a finished run does nothing more and reports it
    again = train(tiny(steps=10), tmp_path, resume=True, progress=False)
    assert again["status"] == "finished" and again["steps"] == 10 and again["metrics"]
    # resume=True on an empty folder simply starts
    assert train(tiny(steps=10), tmp_path / "new", resume=True, progress=False)["steps"] == 10


def test_divergence_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_g_loss = trainer.losses.g_loss
    calls = {"n": 0}

    def nan_after_25(kind, logits):
        calls["n"] += 1
        loss = real_g_loss(kind, logits)
        return loss * float("nan") if calls["n"] >= 25 else loss

    monkeypatch.setattr(trainer.losses, "g_loss", nan_after_25)
    with pytest.warns(UserWarning, match="diverged at step 25: loss_g = nan"):
        out = train(tiny(steps=40, ckpt_every=10), tmp_path, progress=False)
    assert out["status"] == "diverged"
    assert out["divergence"] == {
        "step": 25,
        "layer": None,
        "quantity": "loss_g",
        "value": out["divergence"]["value"],
    }
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010.pt", "step_00000020.pt"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["divergence"]["step"] == 25
    assert m["final"]["checkpoint_step"] == 20 and "modes_covered" in m["final"]
    for p in list_checkpoints(tmp_path):
        ck = load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in ck["G"].values())


def test_divergence_exploding_sigma_names_the_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "MAX_SIGMA", 1e-3)
    with pytest.warns(UserWarning, match=r"diverged at step 10: layer 'D.net.0', sigma = "):
        out = train(tiny(method="none"), tmp_path, progress=False)
    assert out["status"] == "diverged"
    assert out["divergence"]["layer"] == "D.net.0" and out["divergence"]["quantity"] == "sigma"


def test_check_weights_names_nan_parameter():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[0].bias[1] = float("inf")
    with pytest.raises(trainer.Diverged, match="layer 'D.0.bias', weight = inf"):
        trainer._check_weights(7, ("D", net))


@pytest.mark.slow
def test_sn_covers_more_ring_modes_than_at_init(tmp_path):
    from normlab.gan.evaluate import Evaluator
    from normlab.gan.run import build_networks, load_run_data

    cfg = TrainConfig.preset("ring8", steps=500, eval_every=0, log_every=100).resolved()
    G, _ = build_networks(cfg, load_run_data(cfg))
    at_init = Evaluator(cfg, load_run_data(cfg), tmp_path)(G)["modes_covered"]
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["metrics"]["modes_covered"] > at_init, (at_init, out["metrics"])
