"""nl.load_torch_spectral_norm_state: PyTorch spectral_norm state dicts (both forms)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as hook_spectral_norm

import normlab as nl
from normlab.reparam import is_reparametrized, methods_of


class Net(nn.Module):
    """Conv, transposed, grouped conv, Embedding, Linear; a BatchNorm and a plain layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
        self.grouped = nn.Conv2d(6, 4, 3, stride=2, groups=2)
        self.embed = nn.Embedding(5, 4 * 3 * 3)
        self.head = nn.Linear(4 * 3 * 3, 2)
        self.plain = nn.Linear(2, 1)  # never spectrally normalized

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn(self.conv(x)), 0.1)
        h = F.leaky_relu(self.up(h), 0.1)
        h = self.grouped(h).flatten(1)
        h = h + self.embed(y)
        return self.plain(self.head(h))


SN_LAYERS = ("conv", "up", "grouped", "embed", "head")


def _torch_sn_model(form: str, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    wrap = hook_spectral_norm if form == "hook" else parametrizations.spectral_norm
    for name in SN_LAYERS:
        wrap(getattr(net, name))
    return net


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 5, (4,), generator=g)


def _train(net: nn.Module, steps: int = 4) -> None:
    """A few GAN-like steps: two forwards (two batches) before one backward."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for step in range(steps):
        a, b = _batch(10 + step), _batch(100 + step)
        loss = F.softplus(-net(*a)).mean() + F.softplus(net(*b)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("form", ["hook", "parametrize"])
@pytest.mark.parametrize("pre_applied", [False, True], ids=["plain", "nl-sn"])
def test_eval_outputs_match_pytorch(form: str, pre_applied: bool) -> None:
    ref = _torch_sn_model(form)
    _train(ref)
    ref.eval()
    state = ref.state_dict()
    if form == "hook":
        assert "conv.weight_orig" in state and "conv.weight_u" in state and "conv.weight_v" in state
    else:
        assert "conv.parametrizations.weight.original" in state
        assert "conv.parametrizations.weight.0._u" in state

    torch.manual_seed(123)  # different init: everything must come from the state dict
    model = Net()
    if pre_applied:
        nl.apply(model, "sn", include=list(SN_LAYERS))
    out = nl.load_torch_spectral_norm_state(model, state)
    assert out is model
    assert methods_of(model) == dict.fromkeys(SN_LAYERS, "sn")
    assert not is_reparametrized(model.plain)
    model.eval()
    x, y = _batch(7)
    with torch.no_grad():
        expected, got = ref(x, y), model(x, y)
        # normlab multiplies by 1/sigma where PyTorch divides: equal to float rounding.
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        for name in SN_LAYERS:
            torch.testing.assert_close(
                getattr(model, name).weight, getattr(ref, name).weight, rtol=1e-6, atol=1e-7
            )
    # The vectors and raw weights were carried over as they were.
    sn = model.conv.reparam
    prefix = "conv.weight_" if form == "hook" else "conv.parametrizations.weight.0._"
    assert torch.equal(sn.u0, state[prefix + "u"])
    assert torch.equal(sn.v0, state[prefix + "v"])
    assert torch.equal(model.bn.running_mean, ref.bn.running_mean)
    # Training goes on under normlab.
    _train(model, steps=2)
    assert torch.isfinite(model(x, y)).all()


def test_top_level_module_is_the_layer() -> None:
    ref = hook_spectral_norm(nn.Linear(6, 3))
    _train_layer = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        loss = ref(torch.randn(5, 6)).square().mean()
        _train_layer.zero_grad()
        loss.backward()
        _train_layer.step()
    ref.eval()
    layer = nl.load_torch_spectral_norm_state(nn.Linear(6, 3), ref.state_dict()).eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-6, atol=1e-7)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


def test_layer_with_another_method_is_refused() -> None:
    state = _torch_sn_model("parametrize").state_dict()
    model = Net()
    nl.apply(model, "bssn", include="up")
    before = _weights(model)
    with pytest.raises(ValueError, match=r"layer 'up' carries normlab's 'bssn'.*'sn'"):
        nl.load_torch_spectral_norm_state(model, state)
    _unchanged(model, before)
    assert methods_of(model) == {"up": "bssn"}


def test_other_architecture_is_refused_and_model_unchanged() -> None:
    state = _torch_sn_model("hook").state_dict()

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(36, 2)

    model = Other()
    before = _weights(model)
    with pytest.raises(
        ValueError, match=r"do not match the model: Other has no such module at 'embed'"
    ):
        nl.load_torch_spectral_norm_state(model, state)
    _unchanged(model, before)
    assert not methods_of(model)


def test_wrong_shapes_are_refused() -> None:
    state = _torch_sn_model("hook").state_dict()
    model = Net()
    model.conv = nn.Conv2d(3, 8, 5, padding=2)  # another kernel size
    before = _weights(model)
    with pytest.raises(ValueError, match=r"layer 'conv'.*do not fit its weight"):
        nl.load_torch_spectral_norm_state(model, state)
    _unchanged(model, before)
    assert not methods_of(model)


def test_missing_and_unexpected_keys_are_named() -> None:
    state = _torch_sn_model("hook").state_dict()
    del state["plain.weight"]
    state["extra.thing"] = torch.zeros(1)
    model = Net()
    before = _weights(model)
    with pytest.raises(
        ValueError,
        match=r"missing from the state dict: 'plain.weight'.*not in the model: 'extra.thing'",
    ):
        nl.load_torch_spectral_norm_state(model, state)
    _unchanged(model, before)
    assert not methods_of(model)  # the layers given "sn" on the way were restored
    # strict=False loads what matches.
    nl.load_torch_spectral_norm_state(model, state, strict=False)
    assert methods_of(model) == dict.fromkeys(SN_LAYERS, "sn")


def test_non_spectral_state_dict_and_bad_triples() -> None:
    with pytest.raises(ValueError, match="no entry of PyTorch's spectral_norm"):
        nl.load_torch_spectral_norm_state(Net(), Net().state_dict())
    state = _torch_sn_model("hook").state_dict()
    del state["conv.weight_v"]
    with pytest.raises(
        ValueError, match=r"incomplete .* layer 'conv'.*conv.weight_v.*PyTorch < 1.1"
    ):
        nl.load_torch_spectral_norm_state(Net(), state)
    mixed = _torch_sn_model("hook").state_dict()
    mixed["conv.parametrizations.weight.0._u"] = mixed["conv.weight_u"]
    with pytest.raises(ValueError, match="mixes both PyTorch spectral_norm forms for layer 'conv'"):
        nl.load_torch_spectral_norm_state(Net(), mixed)
    # A key naming a module that is not a weighted layer.
    bad = {
        "bn.weight_orig": torch.ones(8),
        "bn.weight_u": torch.ones(8),
        "bn.weight_v": torch.ones(1),
    }
    with pytest.raises(ValueError, match=r"BatchNorm2d, not a weighted layer"):
        nl.load_torch_spectral_norm_state(Net(), bad)


def test_layer_still_under_pytorch_spectral_norm_is_refused() -> None:
    state = _torch_sn_model("hook").state_dict()
    model = _torch_sn_model("parametrize")
    with pytest.raises(ValueError, match=r"torch\.nn\.utils\.parametrize"):
        nl.load_torch_spectral_norm_state(model, state)
