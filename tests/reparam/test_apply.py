"""apply() / remove() on whole models, and the mechanism's guarantees for every method."""

import copy
import io

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator

REAL_METHODS = [m for m in nl.METHODS if m != "none"]


class Mixed(nn.Module):
    """One layer of every supported kind, chained."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv1 = nn.Conv1d(4, 6, 3, padding=1)
        self.up1 = nn.ConvTranspose1d(6, 4, 1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.conv3 = nn.Conv3d(1, 2, 3, padding=1)
        self.up3 = nn.ConvTranspose3d(2, 1, 1)
        self.head = nn.Linear(4 * 16 * 16 + 4 * 4 * 4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.up1(self.conv1(self.embed(tokens).transpose(1, 2)))  # (N, 4, 8)
        h = self.up(self.conv2(h.unsqueeze(3) * h.unsqueeze(2)))  # (N, 4, 16, 16)
        v = self.up3(self.conv3(h[:, :, :4, :4].unsqueeze(1)))  # (N, 1, 4, 4, 4)
        return self.head(torch.cat([h.flatten(1), v.flatten(1)], 1))


def build(method, seed=0, **kw):
    torch.manual_seed(seed)
    return nl.apply(Mixed(), method, **kw)


TOKENS = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(1))


def trained(method):
    model = build(method)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(TOKENS).pow(2).mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("method", REAL_METHODS)
def test_every_supported_layer_gets_the_method(method):
    model = build(method)
    got = nl.methods_of(model)
    assert set(got) == {"embed", "conv1", "conv2", "up", "conv3", "up3", "up1", "head"}
    expected = {"ssn": "ssn", "bssn": "bssn"}.get(method, method)
    assert set(got.values()) == {expected}


@pytest.mark.parametrize("method", REAL_METHODS)
def test_state_dict_round_trip_into_a_fresh_model(method):
    model = trained(method)
    fresh = build(method, seed=123)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(TOKENS), model(TOKENS), rtol=0, atol=0)


@pytest.mark.parametrize("method", REAL_METHODS)
def test_deepcopy_and_whole_model_pickle(method):
    model = trained(method)
    model.eval()
    expected = model(TOKENS)
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (twin, loaded):
        torch.testing.assert_close(other(TOKENS), expected, rtol=0, atol=0)
        assert nl.methods_of(other) == nl.methods_of(model)
    # The copy is independent: training it leaves the original alone.
    twin.train()
    torch.optim.SGD(twin.parameters(), lr=1.0).zero_grad()
    twin(TOKENS).sum().backward()
    for p in twin.parameters():
        if p.grad is not None:
            p.data.add_(p.grad)
    torch.testing.assert_close(model(TOKENS), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", REAL_METHODS)
def test_remove_keeps_outputs_and_restores_plain_layers(method):
    model = trained(method)
    model.eval()
    expected = model(TOKENS).detach()
    plain_keys = set(Mixed().state_dict())
    nl.remove(model)
    assert nl.methods_of(model) == {}
    assert type(model.conv2) is nn.Conv2d
    assert set(model.state_dict()) == plain_keys
    assert all(type(p) is nn.Parameter and p.is_leaf for p in model.parameters())
    torch.testing.assert_close(model(TOKENS), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", REAL_METHODS)
def test_layer_used_twice_before_one_backward(method):
    d = nl.apply(StandardCNNDiscriminator(resolution=8, channels=1, width=8), method)
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    for _ in range(2):
        real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
        loss = torch.relu(1 - d(real)).mean() + torch.relu(1 + d(fake)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in d.parameters())


@pytest.mark.parametrize("method", REAL_METHODS)
def test_autocast_forward_and_backward(method):
    d = nl.apply(StandardCNNDiscriminator(resolution=8, channels=1, width=8), method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(torch.randn(4, 1, 8, 8))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    grads = [p.grad for p in d.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_include_and_exclude_globs():
    model = build("sn", include=["conv*", "up"], exclude="conv3")
    assert sorted(nl.methods_of(model)) == ["conv1", "conv2", "up"]
    model = build("eqlr", exclude="head")
    assert "head" not in nl.methods_of(model)
    with pytest.raises(ValueError, match="no layer"):
        build("sn", include="nothing*")


def test_default_scale_for_scaled_methods():
    model = build("bssn")
    assert model.conv2.reparam.scale == nl.DEFAULT_SCALE
    model = build("ssn", scale=1.6)
    assert model.conv2.reparam.scale == 1.6


def test_apply_none_is_identity():
    model = Mixed()
    assert nl.apply(model, "none") is model
    assert nl.methods_of(model) == {}


def snapshot(model):
    return type(model.conv2), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    cls, state = snap
    assert type(model.conv2) is cls
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "match"),
    [
        ("spectral", {}, ValueError, "unknown method 'spectral'"),
        ("sn", {"scale": 1.2}, ValueError, "use 'ssn' or 'bssn'"),
        ("ssn", {"scale": 0.0}, ValueError, "scale must be"),
        ("bssn", {"scale": -1.0}, ValueError, "scale must be"),
        ("sn", {"n_power_iterations": 0}, ValueError, "n_power_iterations"),
        ("sn", {"n_power_iterations": 1.5}, TypeError, "n_power_iterations"),
        ("eqlr", {"gain": 0}, ValueError, "gain"),
        ("eqlr", {"lr_multiplier": -0.1}, ValueError, "lr_multiplier"),
        ("wn", {"scale": 2.0}, TypeError, "takes no argument 'scale'"),
        ("none", {"scale": 2.0}, TypeError, "takes no arguments"),
    ],
)
def test_bad_arguments_are_refused_and_the_model_is_unchanged(method, kwargs, error, match):
    model = Mixed()
    snap = snapshot(model)
    with pytest.raises(error, match=match):
        nl.apply(model, method, **kwargs)
    assert_unchanged(model, snap)


def test_second_method_on_a_layer_is_refused_and_the_model_is_unchanged():
    model = build("sn", include="conv*")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="layer 'conv1' already has the 'sn'"):
        nl.apply(model, "wn")
    assert_unchanged(model, snap)
    assert nl.methods_of(model) == {"conv1": "sn", "conv2": "sn", "conv3": "sn"}


def test_non_finite_weight_is_refused_naming_the_layer():
    model = Mixed()
    with torch.no_grad():
        model.up.weight[0, 0, 0, 0] = float("nan")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="layer 'up' has 1 non-finite"):
        nl.apply(model, "sn")
    assert nl.methods_of(model) == {}
    _cls, state = snap
    now = model.state_dict()
    assert all(torch.equal(now[k], state[k]) or k == "up.weight" for k in state)


def test_failure_midway_rolls_back_earlier_layers():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 1\] for layer '2'"):
        nl.apply(model, "wn", dim=2)  # fine for the 4-d conv weight, not for the Linear
    assert nl.methods_of(model) == {}
    assert type(model[0]) is nn.Conv2d
    now = model.state_dict()
    assert now.keys() == before.keys()
    assert all(torch.equal(now[k], before[k]) for k in before)


def test_weight_norm_of_an_all_zero_slice_stays_zero():
    emb = nl.weight_norm(nn.Embedding(5, 3, padding_idx=0))
    assert torch.equal(emb.weight[0], torch.zeros(3))
    assert torch.isfinite(emb.weight).all()
    emb(torch.tensor([0, 1])).sum().backward()
    assert torch.isfinite(emb.reparam.v.grad).all()


def test_remove_eqlr_without_bias():
    layer = nl.equalized_lr(nn.Linear(3, 2, bias=False))
    w = layer.weight.detach().clone()
    nl.remove(layer)
    assert layer.bias is None
    torch.testing.assert_close(layer.weight.detach(), w)


def test_eqlr_keeps_the_embedding_padding_row_zero():
    emb = nl.equalized_lr(nn.Embedding(5, 3, padding_idx=2))
    assert torch.equal(emb.weight[2], torch.zeros(3))


def test_unsupported_module_types():
    with pytest.raises(TypeError, match="BatchNorm2d is not supported"):
        nl.spectral_norm(nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match="Sequential is not supported"):
        nl.weight_norm(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no layer"):
        nl.apply(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "sn")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        nl.apply("model", "sn")


def test_layers_carrying_pytorch_reparameterizations_are_refused():
    from torch.nn.utils import parametrizations, spectral_norm

    with pytest.raises(ValueError, match="torch.nn.utils.parametrize"):
        nl.apply(parametrizations.spectral_norm(nn.Linear(3, 3)), "sn")
    with pytest.raises(ValueError, match="hook-based"):
        nl.apply(spectral_norm(nn.Linear(3, 3)), "bsn")


def test_setting_the_effective_weight_is_a_clear_error():
    layer = nl.spectral_norm(nn.Linear(3, 2))
    with pytest.raises(AttributeError, match="computed by its 'sn'"):
        layer.weight = torch.zeros(2, 3)


def test_optimizer_built_before_apply_still_trains_the_raw_weight():
    layer = nn.Linear(4, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    nl.spectral_norm(layer)
    raw = layer.reparam.raw_weight.detach().clone()
    layer(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(raw, layer.reparam.raw_weight)
