"""PacGAN's 2-D setup: the maxout discriminator, the BatchNorm generator, packing, the configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normlab.gan.config import TrainConfig
from normlab.gan.losses import d_loss
from normlab.gan.models import (
    Maxout,
    MaxoutMLPDiscriminator,
    MLPDiscriminator,
    MLPGenerator,
    build_models,
)
from normlab.gan.pack import PackedDiscriminator, pack_samples

from ._util import tiny

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_maxout_is_the_max_over_each_units_pieces():
    torch.manual_seed(0)
    layer = Maxout(3, 4, pieces=5)
    x = torch.randn(7, 3)
    W, b = layer.linear.weight.detach(), layer.linear.bias.detach()
    # Unit j's pieces are rows j*5 .. j*5+4 of the linear layer: take each max by hand.
    expected = torch.empty(7, 4)
    for n in range(7):
        for j in range(4):
            expected[n, j] = max(float(W[j * 5 + k] @ x[n] + b[j * 5 + k]) for k in range(5))
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="at least 2 pieces, got 1"):
        Maxout(3, 4, pieces=1)


def test_pacgan_networks_have_the_papers_sizes():
    G, D = build_models(
        "mlp", (2,), 2, 400, tanh=False, depth=4, d_width=200, maxout=5, g_batchnorm=True
    )
    assert isinstance(D, MaxoutMLPDiscriminator) and isinstance(G, MLPGenerator)
    # D: 2 -> 3 maxout layers of 200 units x 5 pieces -> 1.
    d_params = (2 * 1000 + 1000) + 2 * (200 * 1000 + 1000) + (200 + 1)
    assert sum(p.numel() for p in D.parameters()) == d_params
    # G: 2 -> 4 x (linear without bias, BatchNorm, ReLU) of 400 -> linear 2.
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 4 and all(b.num_features == 400 for b in bns)
    g_params = 2 * 400 + 3 * 400 * 400 + 4 * 2 * 400 + 400 * 2 + 2
    assert sum(p.numel() for p in G.parameters()) == g_params
    x = G(torch.randn(6, 2))
    assert x.shape == (6, 2) and D(x).shape == (6,)


def test_packing_concatenates_consecutive_samples():
    torch.manual_seed(0)
    inner = MLPDiscriminator(in_dim=2 * 3, width=8)
    D = PackedDiscriminator(inner, pack=3)
    x = torch.randn(12, 2)
    out = D(x)
    assert out.shape == (12,)
    for j in range(4):  # pack j = samples 3j, 3j+1, 3j+2 side by side
        s = inner(torch.cat([x[3 * j], x[3 * j + 1], x[3 * j + 2]])[None])[0]
        torch.testing.assert_close(out[3 * j : 3 * j + 3], s.expand(3))
    img = torch.randn(4, 3, 2, 2)
    packed = pack_samples(img, 2)
    assert packed.shape == (2, 6, 2, 2)
    assert torch.equal(packed[1, :3], img[2]) and torch.equal(packed[1, 3:], img[3])
    with pytest.raises(ValueError, match="10 samples cannot be cut into packs of 3"):
        D(torch.randn(10, 2))


def test_packed_loss_and_gradient_are_those_of_the_packs():
    """The trainer's per-sample loss on [real; fake] equals PacGAN's loss over packs."""
    torch.manual_seed(1)
    inner = MLPDiscriminator(in_dim=4, width=8)
    D = PackedDiscriminator(inner, pack=2)
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    logits = D(torch.cat([real, fake]))
    ours = d_loss("ns", logits[:6], logits[6:])
    (g_ours,) = torch.autograd.grad(ours, inner.net[0].weight)
    packs_real = torch.stack([torch.cat([real[2 * j], real[2 * j + 1]]) for j in range(3)])
    packs_fake = torch.stack([torch.cat([fake[2 * j], fake[2 * j + 1]]) for j in range(3)])
    # PacGAN's D loss: softplus(-D(real packs)) + softplus(D(fake packs)), mean over packs.
    sp = torch.nn.functional.softplus
    theirs = (sp(-inner(packs_real)) + sp(inner(packs_fake))).mean()
    (g_theirs,) = torch.autograd.grad(theirs, inner.net[0].weight)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g_ours, g_theirs)


def test_pack_on_images_and_errors():
    G, D = build_models("cnn", (1, 8, 8), 8, 8, pack=2)
    assert D(G(torch.randn(4, 8))).shape == (4,)
    with pytest.raises(ValueError, match="options of the mlp architecture"):
        build_models("cnn", (1, 8, 8), 8, 8, maxout=5)
    with pytest.raises(ValueError, match="pack must be a positive integer"):
        build_models("mlp", (2,), 8, 8, pack=0)


def test_config_checks():
    with pytest.raises(ValueError, match="batch_size 100 is not a multiple of pack 3"):
        TrainConfig(batch_size=100, pack=3)
    with pytest.raises(ValueError, match="maxout must be 0 .* got 1"):
        TrainConfig(maxout=1)
    with pytest.raises(ValueError, match="maxout, g_batchnorm are options of the mlp"):
        TrainConfig(data="digits", maxout=5, g_batchnorm=True)
    with pytest.raises(ValueError, match="pack=2 does not work with loss wgan-gp"):
        TrainConfig(pack=2, loss="wgan-gp")
    with pytest.raises(ValueError, match="init_std must be >= 0"):
        TrainConfig(init_std=-0.1)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_pacgan_configs_hold_the_papers_setup(name):
    cfg = TrainConfig.from_file(CONFIGS / f"pacgan_{name}.yaml").resolved()
    assert (cfg.data, cfg.loss, cfg.method, cfg.batch_size, cfg.n_dis) == (
        name,
        "ns",
        "none",
        100,
        1,
    )
    assert (cfg.lr_d, cfg.lr_g, cfg.beta1, cfg.beta2) == (1e-4, 1e-4, 0.8, 0.999)
    assert (cfg.width, cfg.depth, cfg.g_batchnorm, cfg.z_dim) == (400, 4, True, 2)
    assert (cfg.d_width, cfg.maxout, cfg.init_std) == (200, 5, 0.02)
    assert cfg.steps == 400 * 100_000 // 100 and cfg.eval_samples == 2500


def test_init_std_draws_every_weight_from_the_normal():
    from normlab.data import load_data
    from normlab.gan.run import build_networks

    cfg = TrainConfig.from_file(CONFIGS / "pacgan_ring8.yaml").resolved()
    G, D = build_networks(cfg, load_data("ring8"))
    w = torch.cat(
        [m.weight.detach().flatten() for m in D.modules() if isinstance(m, torch.nn.Linear)]
    )
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    biases = [m.bias for m in [*G.modules(), *D.modules()] if isinstance(m, torch.nn.Linear)]
    assert all(float(b.detach().abs().max()) == 0.0 for b in biases if b is not None)


def test_tiny_packed_maxout_run_trains(tmp_path):
    from normlab.gan.trainer import train

    cfg = tiny(
        steps=12,
        eval_every=6,
        ckpt_every=6,
        pack=2,
        maxout=3,
        d_width=16,
        g_batchnorm=True,
        init_std=0.02,
        loss="ns",
    )
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["status"] == "finished"
    assert set(out["metrics"]) >= {"modes_covered", "high_quality_frac", "reverse_kl"}
