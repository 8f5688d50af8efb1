"""The trainer's fused Adam is the per-tensor Adam: the same GAN updates up to rounding.

The trainer builds ``Adam(fused=True)`` (one kernel over a model's tensors, faster on the
ring's small MLPs: benchmarks/bench_optimizer.py). Checked against PyTorch's plain for-loop
Adam (``foreach=False``) on the lab's own networks and update functions, for methods whose
raw tensors differ in kind (SN's raw weight, WN's direction and length, eqlr's scaled weight).
"""

from __future__ import annotations

import copy

import pytest
import torch

from normlab.gan import steps
from normlab.gan.config import TrainConfig
from normlab.gan.run import build_networks, load_run_data
from normlab.gan.trainer import train


def _train_iterations(G, D, cfg: TrainConfig, n: int, **adam) -> None:
    betas = (cfg.beta1, cfg.beta2)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas, **adam)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas, **adam)
    gen = torch.Generator().manual_seed(7)
    for _ in range(n):
        real = 0.5 * torch.randn(cfg.batch_size, 2, generator=gen)
        with torch.no_grad():
            fake = G(torch.randn(cfg.batch_size, cfg.z_dim, generator=gen))
        opt_d.zero_grad(set_to_none=True)
        steps.d_step_loss(D, D, real, fake, cfg.loss).loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen)
        steps.g_step_loss(G, D, D, z, cfg.loss).backward()
        opt_g.step()


@pytest.mark.parametrize("method", ["sn", "wn", "eqlr"])
def test_fused_adam_trains_as_the_per_tensor_loop(method):
    cfg = TrainConfig.preset("ring8", method=method, batch_size=32).resolved()
    G, D = build_networks(cfg, load_run_data(cfg))
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    _train_iterations(G, D, cfg, 8, fused=True)
    _train_iterations(G2, D2, cfg, 8, foreach=False)
    for a, b in ((G, G2), (D, D2)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        for (name, p), q in zip(a.named_buffers(), b.buffers()):  # SN's power vectors
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    start_G, _ = build_networks(cfg, load_run_data(cfg))
    moved = any(not torch.equal(p, q) for p, q in zip(G.parameters(), start_G.parameters()))
    assert moved  # the updates did happen


def test_the_trainer_uses_fused_adam(tmp_path):
    cfg = TrainConfig.preset("ring8", steps=2, batch_size=16, eval_every=0, eval_samples=100)
    train(cfg, tmp_path / "run", progress=False)
    ck = torch.load(sorted((tmp_path / "run").rglob("*.pt"))[-1], weights_only=False)
    for name in ("opt_d", "opt_g"):
        assert ck[name]["param_groups"][0]["fused"] is True
