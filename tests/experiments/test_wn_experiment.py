"""Weight normalization at --quick size: data init, Hessian eigenvalue and training speed."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

import normlab as nl
from normlab.experiments import wn
from normlab.experiments._common import load_digits_split


def _preactivations(model, x):
    """Each layer's pre-activation, by our own forward with the layers' effective weights."""
    outs = []
    layers = wn.weight_layers(model)
    for n, layer in enumerate(layers[:-1]):
        t = F.conv2d(x, layer.weight, layer.bias, stride=wn.STRIDES[n], padding=1)
        outs.append(t)
        x = F.relu(t)
    outs.append(F.linear(x.mean(dim=(2, 3)), layers[-1].weight, layers[-1].bias))
    return outs


def _unit_stats(t):
    dims = [0] if t.dim() == 2 else [0, 2, 3]
    return t.mean(dim=dims), t.std(dim=dims, unbiased=False)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("wn")
    return out, wn.run(out, quick=True)


@pytest.mark.slow
def test_data_init_gives_unit_variance_preactivations_layer_by_layer(quick):
    out, result = quick
    cfg = wn.WNConfig(**{**result["config"], "channels": tuple(result["config"]["channels"])})
    x = load_digits_split(0)[0][: cfg.init_batch]
    torch.manual_seed(0)
    plain = wn.CNN(cfg.channels)
    torch.manual_seed(0)
    model = nl.data_init(nl.apply(wn.CNN(cfg.channels), "wn"), x)
    data = json.loads((out / "wn.json").read_text())["data_init"]
    with torch.no_grad():
        before = _preactivations(plain, x)
        after = _preactivations(model, x)
    assert len(after) == len(data["after"]["init_batch"]) == 5
    for t0, t1, r0, r1 in zip(
        before, after, data["before"]["init_batch"], data["after"]["init_batch"]
    ):
        mean, std = _unit_stats(t1)
        assert mean.abs().max() < 1e-4
        assert (std - 1).abs().max() < 1e-3
        assert r1["std_mean"] == pytest.approx(float(std.mean()), rel=1e-4)
        # Before data_init, WN registered on the plain net computes the plain net's function.
        assert r0["std_mean"] == pytest.approx(float(_unit_stats(t0)[1].mean()), rel=1e-4)
    # PyTorch's default init shrinks the signal layer by layer: the figure's "before".
    stds = [r["std_mean"] for r in data["before"]["init_batch"]]
    assert all(b < a for a, b in itertools.pairwise(stds))


@pytest.mark.slow
def test_training_speed_and_conditioning_are_reported(quick):
    out, result = quick
    s = result["summary"]
    assert set(s) == set(wn.VARIANTS)
    # Data-dependent init speeds up this net a lot even in two epochs (the signal of the
    # default init is ~1e-3 at the logits), on every seed.
    assert s["wn"]["max_final_train_loss"] < s["plain"]["min_final_train_loss"]
    cond = result["conditioning"]["by_checkpoint"]
    for name in ("plain", "wn"):
        assert (
            cond[name][0]["step"] == 0 and cond[name][-1]["step"] == result["config"]["cond_steps"]
        )
        eig = [r["top_eigenvalue_mean"] for r in cond[name]]
        assert all(e > 0 for e in eig)
    # Same function at step 0: the same loss.
    assert cond["wn"][0]["loss_mean"] == pytest.approx(cond["plain"][0]["loss_mean"], rel=1e-5)
    assert (out / "wn.png").stat().st_size > 0


def test_functional_wn_matches_normlab_weight_norm():
    cfg = wn.WNConfig(channels=(3, 4))
    x = torch.randn(5, 1, 8, 8)
    params = wn.plain_params(cfg, seed=1)
    torch.manual_seed(1)
    model = nl.apply(wn.CNN(cfg.channels), "wn")
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(wn.functional_forward(params, x, wn=False), ref)
        torch.testing.assert_close(wn.functional_forward(wn.to_wn(params), x, wn=True), ref)


@pytest.mark.parametrize("use_wn", [False, True])
def test_power_iteration_finds_the_dense_hessians_top_eigenvalue(use_wn):
    cfg = wn.WNConfig(channels=(2, 2))
    params = wn.plain_params(cfg, seed=0)
    if use_wn:
        params = wn.to_wn(params)
    params = [p.double() for p in params]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(10, (16,), generator=gen)

    def loss(ps):
        return F.cross_entropy(wn.functional_forward(ps, x, use_wn), y)

    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.flatten() for p in params])

    def flat_loss(f):
        return loss([c.view(s) for c, s in zip(f.split(sizes), shapes)])

    dense = torch.autograd.functional.hessian(flat_loss, flat, vectorize=True)
    eig = torch.linalg.eigvalsh(dense)
    top = float(eig[eig.abs().argmax()])
    assert wn.top_hessian_eigenvalue(loss, params, iters=300) == pytest.approx(top, rel=1e-3)


def test_bad_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown variant 'ln'"):
        wn.build("ln", wn.WNConfig(), 0, torch.zeros(2, 1, 8, 8))
