"""PyTorch's semantics by default: every forward reads the current raw tensors.

Whatever changes the raw tensors, buffers or hyper-parameters is seen by the next forward;
sharing only happens inside ``nl.cached()``. Each test compares a model that went through
the change with a fresh model loaded with the same state (an independent computation).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.reparam import SpectralNorm

METHODS = [m for m in nl.METHODS if m != "none"]
KINDS = {
    "linear": (lambda: nn.Linear(6, 5), (6,)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 5)),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1), (3, 3, 3)),
}


def make(kind: str, method: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = KINDS[kind]
    torch.manual_seed(seed)
    layer = factory()
    x = torch.randn(2, *shape)
    layer(x)
    return nl.apply(layer, method), x


def fresh_copy(layer: nn.Module, kind: str, method: str, x: torch.Tensor) -> nn.Module:
    """A new layer of the same method, loaded with ``layer``'s whole state."""
    other, _ = make(kind, method, seed=123)
    other(x)  # exact SN: the input shape
    other.load_state_dict(layer.state_dict())
    other.train(layer.training)
    return other


WRITES = {
    "data_copy": lambda p: p.data.copy_(p.data * 0.5 + 0.1),
    "data_clamp": lambda p: p.data.clamp_(-0.01, 0.01),
    "no_grad_mul": lambda p: p.mul_(1.7),
}


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("training", [False, True])
def test_writes_to_the_raw_tensors_are_seen_by_the_next_forward(method, kind, write, training):
    layer, x = make(kind, method)
    layer.train(training)
    layer(x).sum().backward()  # a forward and backward first, as in training
    with torch.no_grad():
        for p in layer.parameters():
            WRITES[write](p)
    ref = fresh_copy(layer, kind, method, x)
    torch.testing.assert_close(layer(x), ref(x))
    torch.testing.assert_close(layer.weight, ref.weight)


@pytest.mark.parametrize("method", METHODS)
def test_an_ema_copy_and_load_state_dict_are_seen(method):
    layer, x = make("conv2d", method)
    ema = copy.deepcopy(layer).eval()
    ema(x)
    layer.eval()
    layer(x).sum().backward()
    with torch.no_grad():  # the EMA update of GAN code: p_ema <- b p_ema + (1 - b) p
        for pe, p in zip(ema.parameters(), layer.parameters()):
            pe.lerp_(p + 1.0, 0.5)
        for be, b in zip(ema.buffers(), layer.buffers()):
            be.copy_(b)
    ref = fresh_copy(ema, "conv2d", method, x)
    torch.testing.assert_close(ema(x), ref(x))
    other, _ = make("conv2d", method, seed=5)
    other(x)
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer(x), other.eval()(x))


@pytest.mark.parametrize("method", ["ssn", "bssn", "sn_exact"])
def test_a_new_scale_is_seen(method):
    layer, x = make("conv2d", method)
    layer.eval()
    before = layer(x) - layer.bias.view(1, -1, 1, 1)
    layer.reparam.scale = 2.5 * layer.reparam.scale
    after = layer(x) - layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(after, 2.5 * before)


def test_eqlr_hyper_parameters_are_seen():
    layer, _ = make("linear", "eqlr")
    before = layer.weight.detach().clone()
    layer.reparam.gain = 2 * layer.reparam.gain
    torch.testing.assert_close(layer.weight, 2 * before)


@pytest.mark.parametrize("method", ["sn", "bsn", "sn_exact"])
def test_every_training_forward_steps_and_cached_shares_one_step(method):
    """Outside ``cached()`` D(real) and D(fake) take two steps; inside, one, and they
    share one computed weight; leaving the block drops it."""
    layer, x = make("conv2d", method)
    layer.eval()(x)  # exact SN: its input shape, before the twin is made
    layer.train()
    twin = copy.deepcopy(layer)
    reparam, twin_reparam = layer.reparam, twin.reparam
    layer(x)
    layer(-x)
    with nl.cached():
        twin(x)
        w1 = twin.weight
        twin(-x)
        assert twin.weight is w1
    twin(x)  # outside again: a step of its own
    for (name, a), b in zip(reparam.named_buffers(), twin_reparam.buffers()):
        torch.testing.assert_close(a, b, msg=name)


def test_cached_recomputes_a_no_grad_weight_for_a_grad_forward_without_a_second_step():
    layer, x = make("linear", "sn")
    twin = copy.deepcopy(layer)
    with nl.cached():
        with torch.no_grad():
            layer(x)
        y = layer(x)
    assert y.requires_grad
    twin(x)
    torch.testing.assert_close(layer.reparam.u0, twin.reparam.u0)
    y.sum().backward()
    assert layer.reparam.raw_weight.grad is not None


def test_attention_reads_its_packed_weight_once_per_call():
    """``nn.MultiheadAttention.forward`` reads ``in_proj_weight`` three times: one step."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2)
    nl.apply(attn, "sn")
    twin = copy.deepcopy(attn)
    x = torch.randn(5, 3, 8)
    attn(x, x, x)
    for reparam in (twin.reparam,):
        with torch.no_grad():
            for i, (block, _) in enumerate(reparam.terms):
                w3 = reparam.raw_weight.chunk(3)[block].reshape(8, 8, 1)
                u, v = reparam._buffers[f"u{i}"], reparam._buffers[f"v{i}"]
                v.copy_(nn.functional.normalize(w3[:, :, 0].t() @ u, dim=0))
                u.copy_(nn.functional.normalize(w3[:, :, 0] @ v, dim=0))
    for (name, a), b in zip(attn.reparam.named_buffers(), twin.reparam.buffers()):
        torch.testing.assert_close(a, b, msg=name)


def test_transformer_layer_is_fully_covered_and_each_qkv_block_has_sigma_one():
    torch.manual_seed(1)
    enc = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nl.apply(enc, "sn", strict=True)
    assert set(nl.methods_of(enc)) == {"self_attn", "self_attn.out_proj", "linear1", "linear2"}
    x = torch.randn(4, 2, 16)
    with torch.no_grad():
        for _ in range(100):
            enc(x)
    enc.eval()
    for block in enc.self_attn.in_proj_weight.detach().chunk(3):
        assert torch.linalg.matrix_norm(block, ord=2).item() == pytest.approx(1.0, rel=1e-4)
    y = enc(x)
    assert y.shape == x.shape
    nl.remove(enc)
    torch.testing.assert_close(enc(x), y)


def test_weights_left_alone_are_named_in_a_warning_and_strict_refuses():
    class WithRawWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.mix = nn.Parameter(torch.randn(4, 4))
            self.attn = nn.MultiheadAttention(4, 1, kdim=3, vdim=3)

    model = WithRawWeight()
    with pytest.warns(UserWarning, match=r"mix.*attn\.q_proj_weight"):
        nl.apply(model, "sn")
    model = WithRawWeight()
    with pytest.raises(ValueError, match="strict=True"):
        nl.apply(model, "sn", strict=True)
    assert not nl.methods_of(model)


@pytest.mark.parametrize("method", METHODS)
def test_methods_of_reports_the_method_asked(method):
    kwargs = {"scale": 1.0} if method in nl.reparam.SCALED_METHODS else {}
    model = nl.apply(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)), method, **kwargs)
    assert set(nl.methods_of(model).values()) == {method}


def test_the_registry_describes_every_method():
    reg = nl.REGISTRY
    assert tuple(reg) == nl.METHODS
    assert {m for m in reg if reg[m].family == "sn"} == {"sn", "ssn", "bsn", "bssn", "sn_exact"}
    assert {m for m in reg if reg[m].takes_scale} == {"ssn", "bssn"}
    assert all(reg[m].d_only == (reg[m].family == "sn") for m in reg)
    # The scale a method takes is the one its layers carry.
    model = nl.apply(nn.Linear(3, 3), "bssn")
    assert isinstance(model.reparam, SpectralNorm)
    assert model.reparam.scale == nl.DEFAULT_SCALE and model.reparam.bidirectional
