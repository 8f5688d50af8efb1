"""``normlab train --compile`` and ``--precision``: config checks, compiled = eager, bf16 runs.

Compiled training (CPU inductor) is compared with eager training of the same config after a
few steps: every weight and power vector within float tolerance. Under the SN family this
holds because the effective weight (power step and normalization) runs eagerly inside the
compiled model (``torch.compiler.disable`` in ``normlab.reparam.spectral``: inductor gets the
gradient of the in-place power step wrong, see .notes/reparam_bugs.md, bug 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import normlab as nl
from normlab.gan.checkpoint import latest_checkpoint
from normlab.gan.config import TrainConfig


def _cfg(**kw) -> TrainConfig:
    base = dict(
        data="ring8",
        steps=4,
        width=16,
        depth=2,
        batch_size=32,
        lr_d=5e-3,
        lr_g=5e-3,
        log_every=2,
        eval_every=0,
        ckpt_every=0,
        eval_samples=200,
    )
    base.update(kw)
    return TrainConfig(**base)


def _final(run: Path) -> dict:
    found = latest_checkpoint(run)
    assert found is not None
    return found[1]


def test_config_fields() -> None:
    cfg = TrainConfig()
    assert cfg.compile is False and cfg.precision == "fp32" and cfg.sync_bn is False
    assert TrainConfig().with_overrides(["compile=true", "precision=bf16"]).compile is True
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp64")
    with pytest.raises(TypeError, match="compile must be true/false"):
        TrainConfig(compile="yes")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="sync_bn"):
        TrainConfig(sync_bn=True, device="cpu")
    TrainConfig(precision="fp16", device="cuda", sync_bn=True)  # valid (checked, not run)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sn", "eqlr"])
def test_compiled_training_matches_eager(tmp_path: Path, method: str) -> None:
    from normlab.gan.trainer import train

    # Non-saturating loss: under hinge the last bias's gradient is exactly zero while every
    # logit is inside the margin, and Adam turns its rounding residue (which differs between
    # compiled and eager kernels) into a full step of either sign.
    cfg = _cfg(method=method, loss="ns")
    eager = train(cfg, tmp_path / "eager", progress=False)
    compiled = train(cfg.replace(compile=True), tmp_path / "compiled", progress=False)
    assert eager["status"] == compiled["status"] == "finished"
    a, b = _final(tmp_path / "eager"), _final(tmp_path / "compiled")
    init = torch.load(tmp_path / "eager" / "checkpoints" / "step_00000000.pt", weights_only=True)
    for net in ("G", "D"):
        for k in a[net]:
            torch.testing.assert_close(b[net][k], a[net][k], rtol=1e-4, atol=1e-5, msg=k)
    moved = max((a["D"][k] - init["D"][k]).abs().max().item() for k in a["D"])
    assert moved > 1e-2  # the runs trained: not two initial states compared


def test_bf16_training_runs_with_fp32_sigmas(tmp_path: Path) -> None:
    from normlab.gan import trainer

    cfg = _cfg(method="bssn", arch="mlp", precision="bf16", steps=6)
    result = trainer.train(cfg, tmp_path / "bf16", progress=False)
    assert result["status"] == "finished"
    ck = _final(tmp_path / "bf16")
    # Master weights and power vectors stay float32.
    for net in ("G", "D"):
        assert all(t.dtype == torch.float32 for t in ck[net].values()), net
    records = [json.loads(x) for x in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert records and all(torch.isfinite(torch.tensor(r["loss_d"])) for r in records)
    # The sigma estimates of a bf16 forward are fp32 and equal a fp32 forward's.
    from normlab.gan.run import build_networks, load_run_data

    rcfg = cfg.resolved()
    _, D = build_networks(rcfg, load_run_data(rcfg))
    D.load_state_dict(ck["D"])
    D.eval()
    x = torch.randn(16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D(x)
    assert out.dtype == torch.bfloat16
    layers = [m for m in D.modules() if nl.reparam.is_reparametrized(m)]
    bf16_sigmas = [s for m in layers for s in m.reparam.last_sigmas]
    D(x)
    fp32_sigmas = [s for m in layers for s in m.reparam.last_sigmas]
    assert bf16_sigmas and all(s.dtype == torch.float32 for s in bf16_sigmas)
    for s, t in zip(bf16_sigmas, fp32_sigmas):
        torch.testing.assert_close(s, t, rtol=1e-6, atol=0)
