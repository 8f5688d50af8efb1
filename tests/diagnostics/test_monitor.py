"""Monitor: the record contract the lab's trainer relies on, and the numbers in it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator
from normlab.reparam import reparametrization_of

KEYS = {"sigma", "op_norm", "weight_grad_norm", "std_sqrt_fan_in"}


def small_d(method: str = "none") -> nn.Module:
    torch.manual_seed(0)
    D = StandardCNNDiscriminator(resolution=8, channels=1, width=4)
    D(torch.zeros(1, 1, 8, 8))
    return nl.apply(D, method)


def d_loss(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - D(x)).mean() + F.relu(1 + D(-x)).mean()


@pytest.mark.parametrize("method", ["none", "sn", "bsn", "bssn", "sn_exact", "eqlr", "wn"])
def test_record_contract(method: str, tmp_path) -> None:
    D = small_d(method)
    x = torch.randn(8, 1, 8, 8)
    with nl.diagnostics.Monitor(
        D, every=2, prefix="D", jsonl_path=tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb"
    ) as mon:
        for step in range(5):
            D.zero_grad(set_to_none=True)
            d_loss(D, x).backward()
            rec = mon.record(step, loss_d=1.5)
            assert (rec is None) == (step % 2 == 1)
    assert [r["step"] for r in mon.records] == [0, 2, 4]
    rec = mon.records[-1]
    assert rec["loss_d"] == 1.5 and math.isfinite(rec["lipschitz_bound"])
    assert list(rec["layers"]) == [f"features.{i}" for i in range(0, 14, 2)] + ["head"]
    for row in rec["layers"].values():
        want = KEYS | ({"sigma_t"} if method in ("bsn", "bssn") else set())
        assert set(row) == want
        assert all(isinstance(v, float) and math.isfinite(v) for v in row.values())
        assert row["weight_grad_norm"] > 0
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [0, 2, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    # close() removed every hook
    for m in D.modules():
        if nl.is_reparametrized(m):
            assert not m.reparam._weight_grad_hooks
    with pytest.raises(RuntimeError, match="closed"):
        mon.record(6)


@pytest.mark.parametrize("method", ["none", "sn", "bsn", "sn_exact", "wn"])
def test_numbers_match_the_exact_report(method: str) -> None:
    D = small_d(method)
    x = torch.randn(8, 1, 8, 8)
    mon = nl.diagnostics.Monitor(D)
    for step in range(25):  # the power iterations converge, one step per record
        D.zero_grad(set_to_none=True)
        d_loss(D, x).backward()
        rec = mon.record(step)
    mon.close()
    D.eval()
    rep = nl.diagnostics.layer_report(D, x, loss_fn=lambda _: d_loss(D, x))
    for name, row in rec["layers"].items():
        ref = rep.layers[name]
        assert row["sigma"] == pytest.approx(ref["sigma"], rel=0.05)
        assert row["op_norm"] == pytest.approx(ref["op_norm"], rel=0.05)
        assert row["std_sqrt_fan_in"] == pytest.approx(ref["std_sqrt_fan_in"], rel=1e-4)
        # The gradient of the last training step (the report's D is in eval mode: same weights
        # up to one power step of SN).
        assert row["weight_grad_norm"] == pytest.approx(ref["weight_grad_norm"], rel=0.05)
    if method in ("bsn",):
        assert all("sigma_t" in r for r in rec["layers"].values())
    assert rec["lipschitz_bound"] == pytest.approx(rep.lipschitz_bound, rel=0.2)


@pytest.mark.parametrize("method", ["none", "sn"])
def test_grad_follows_zero_grad_not_the_generator_step(method: str) -> None:
    """The G step's backward through D between two records does not leak into D's numbers."""
    D = small_d(method).eval()  # eval: SN's sigma fixed, so every step's gradient is the same
    G = nn.Linear(4, 64)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.0)
    x = torch.randn(8, 1, 8, 8)
    z = torch.randn(8, 4)
    mon = nl.diagnostics.Monitor(D)
    ref = None
    for step in range(3):
        opt_d.zero_grad()
        loss = d_loss(D, x)
        loss.backward()
        rec = mon.record(step)
        if ref is None:
            ref = rec["layers"]["features.0"]["weight_grad_norm"]
        assert rec["layers"]["features.0"]["weight_grad_norm"] == pytest.approx(ref, rel=1e-4)
        opt_d.step()
        (-D(G(z).view(8, 1, 8, 8)).mean() * 100).backward()  # G step: D's grads too
    mon.close()


def test_two_forwards_and_two_backwards_are_summed() -> None:
    D = small_d("sn")
    D.eval()  # fixed sigma, so every forward uses the same effective weight
    x = torch.randn(8, 1, 8, 8)
    mon = nl.diagnostics.Monitor(D)
    D.zero_grad(set_to_none=True)
    D(x).sum().backward()
    one = mon.record(0)["layers"]["head"]["weight_grad_norm"]
    D.zero_grad(set_to_none=True)
    (D(x).sum() + D(x).sum()).backward()
    assert mon.record(1)["layers"]["head"]["weight_grad_norm"] == pytest.approx(2 * one, rel=1e-5)
    D.zero_grad(set_to_none=True)
    D(x).sum().backward()
    D(x).sum().backward()
    assert mon.record(2)["layers"]["head"]["weight_grad_norm"] == pytest.approx(2 * one, rel=1e-5)
    mon.close()


def test_input_gradients_do_not_count() -> None:
    D = small_d("sn")
    x = torch.randn(8, 1, 8, 8)
    mon = nl.diagnostics.Monitor(D)
    D.zero_grad(set_to_none=True)
    D(x).sum().backward()
    D.eval()
    first = mon.record(0)["layers"]["head"]["weight_grad_norm"]
    D.zero_grad(set_to_none=True)
    D(x).sum().backward()
    nl.diagnostics.input_gradient_norm(D, x)
    assert mon.record(1)["layers"]["head"]["weight_grad_norm"] == pytest.approx(first, rel=1e-5)
    mon.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every"):
        nl.diagnostics.Monitor(small_d(), every=0)
    with pytest.raises(ValueError, match="no weighted layer"):
        nl.diagnostics.Monitor(nn.ReLU())


def test_global_rng_is_not_drawn_from() -> None:
    D = small_d("none")
    x = torch.randn(8, 1, 8, 8)
    mon = nl.diagnostics.Monitor(D)
    D(x).sum().backward()
    state = torch.get_rng_state()
    mon.record(0)
    assert torch.equal(state, torch.get_rng_state())
    mon.close()


def one_pass_loss(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``d_loss`` with one forward of D (real and fake together, as the trainer does): one
    effective weight per step, with or without a weight cache."""
    out = D(torch.cat([x, -x]))
    return F.relu(1 - out[: len(x)]).mean() + F.relu(1 + out[len(x) :]).mean()


def _plain_grad_norms(D: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The effective-weight gradients of ``one_pass_loss`` computed on a plain copy of ``D`` whose
    weights are ``D``'s effective weights (no reparameterization, no hook, no Monitor)."""
    import copy

    plain = nl.remove(copy.deepcopy(D))
    plain.zero_grad(set_to_none=True)
    one_pass_loss(plain, x).backward()
    return {
        name or ".": float(m.weight.grad.norm())
        for name, m in plain.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


@pytest.mark.parametrize("before", ["nothing", "input_gradient_norm", "forward"])
@pytest.mark.parametrize("method", ["none", "sn", "bssn", "wn", "eqlr"])
def test_records_the_gradient_of_its_step_whatever_ran_before(method: str, before: str) -> None:
    """Was a bug: reparam cached a weight computed by an input-gradient pass (or a dropped
    forward) before the Monitor hooked the layer, and the next forward reused it, so the
    Monitor's hook never fired and the first record's weight_grad_norm was 0.0."""
    D = small_d(method)
    x = torch.randn(8, 1, 8, 8)
    if before == "input_gradient_norm":  # the case, D in training mode
        nl.diagnostics.input_gradient_norm(D, x)
    elif before == "forward":  # a forward whose result is dropped
        D(x).sum()
    with nl.diagnostics.Monitor(D) as mon:
        for step in range(2):
            D.zero_grad(set_to_none=True)
            one_pass_loss(D, x).backward()
            rec = mon.record(step)
            ref = _plain_grad_norms(D, x)
            for name, row in rec["layers"].items():
                assert ref[name] > 0
                assert row["weight_grad_norm"] == pytest.approx(ref[name], rel=1e-4), (step, name)


@pytest.mark.parametrize("method", ["none", "sn", "bssn", "wn"])
def test_paused_between_records_gives_each_records_own_gradient(method: str) -> None:
    """The trainer's pattern: paused, resumed before the recorded step's forward, paused after
    its record. Each record equals plain autograd on the effective weights of that step, and
    the paused steps' backwards (several, never zeroed between) are in no record."""
    D = small_d(method)
    x = torch.randn(8, 1, 8, 8)
    opt = torch.optim.SGD(D.parameters(), lr=1e-3)
    mon = nl.diagnostics.Monitor(D, every=3)
    mon.pause()
    assert mon.paused
    for step in range(1, 10):
        if step % 3 == 0:
            mon.resume()
            D.zero_grad(set_to_none=True)
        one_pass_loss(D, x).backward()  # unrecorded steps accumulate: a Monitor must skip them
        if step % 3 == 0:
            rec = mon.record(step)
            mon.pause()
            ref = _plain_grad_norms(D, x)
            for name, row in rec["layers"].items():
                assert row["weight_grad_norm"] == pytest.approx(ref[name], rel=1e-4), (step, name)
        opt.step()
    mon.close()


def test_pause_removes_every_hook_and_resume_restores_them() -> None:
    D = small_d("sn")
    layers = [m for m in D.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def hooks() -> int:
        return sum(
            len(m._forward_pre_hooks) + len(reparametrization_of(m)._weight_grad_hooks)
            for m in layers
        )

    mon = nl.diagnostics.Monitor(D)
    on = hooks()
    assert on > 0
    mon.pause()
    assert hooks() == 0 and mon.paused
    mon.resume()
    mon.resume()  # resuming twice registers nothing twice
    assert hooks() == on and not mon.paused
    mon.close()
    assert hooks() == 0
    with pytest.raises(RuntimeError, match="closed"):
        mon.resume()
    with pytest.raises(RuntimeError, match="closed"):
        mon.pause()
