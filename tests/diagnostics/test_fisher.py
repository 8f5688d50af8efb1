"""max_stable_lr: exact on least squares, and the Gauss-Newton products against formed matrices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

import normlab as nl

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def least_squares(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 6, generator=gen) * torch.tensor([0.3, 0.5, 1.0, 1.5, 2.0, 4.0])
    y = torch.randn(128, 2, generator=gen)
    return x, y


def heavy_ball_loss(
    x: torch.Tensor, y: torch.Tensor, lr: float, momentum: float, steps: int
) -> float:
    torch.manual_seed(1)
    net = nn.Linear(6, 2)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(F.mse_loss(net(x), y))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_least_squares_bound_is_exact(momentum: float) -> None:
    x, y = least_squares()
    net = nn.Linear(6, 2)
    lr, lam = nl.diagnostics.max_stable_lr(
        net,
        F.mse_loss,
        [(x[:64], y[:64]), (x[64:], y[64:])],
        momentum=momentum,
        n_iter=200,
        tol=1e-8,
    )
    # The Hessian of the mean squared error over (weights, bias), formed by hand.
    xa = torch.cat([x, torch.ones(len(x), 1)], 1)
    h = 2 * xa.T @ xa / (len(x) * 2)  # mse_loss averages over both outputs too
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(h).max()), rel=1e-4)
    assert lr == pytest.approx(2 * (1 + momentum) / lam)
    best = heavy_ball_loss(x, y, 1e-3, 0.0, 1)  # a reference scale
    # Within the bound: converges to the least-squares minimum; beyond it: diverges.
    opt_loss = float(F.mse_loss(xa @ torch.linalg.lstsq(xa, y).solution, y))
    stable = heavy_ball_loss(x, y, 0.9 * lr, momentum, 800)
    assert stable == pytest.approx(opt_loss, rel=1e-3)
    unstable = heavy_ball_loss(x, y, 1.1 * lr, momentum, 800)
    assert not math.isfinite(unstable) or unstable > 1e6 * best


def formed_ggn(net: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}
    names = list(params)

    def out_of(p: dict) -> torch.Tensor:
        return functional_call(net, p, (x,))

    jac = jacrev(out_of)(params)
    out = out_of(params)
    n_out = out.numel()
    j = torch.cat([jac[k].reshape(n_out, -1) for k in names], 1)
    h = hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return j.T @ h.reshape(n_out, n_out) @ j


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_lambda_max_matches_formed_gauss_newton(loss: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(10, 3)
    if loss == "mse":
        y, loss_fn = torch.randn(10, 3), F.mse_loss
    else:
        y, loss_fn = torch.randint(0, 3, (10,)), F.cross_entropy
    ref = float(torch.linalg.eigvalsh(formed_ggn(net, loss_fn, x, y)).max())
    lr, lam = nl.diagnostics.max_stable_lr(
        net, loss_fn, [(x, y)], momentum=0.5, n_iter=500, tol=1e-9
    )
    assert lam == pytest.approx(ref, rel=1e-3)
    assert lr == pytest.approx(3.0 / lam)
    assert all(p.grad is None for p in net.parameters())


def test_batchnorm_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lr, lam = nl.diagnostics.max_stable_lr(net, F.cross_entropy, [(x, y)])
    assert lam > 0 and lr == pytest.approx(3.8 / lam)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_errors() -> None:
    net = nn.Linear(2, 1)
    data = [(torch.randn(4, 2), torch.randn(4, 1))]
    with pytest.raises(ValueError, match="momentum"):
        nl.diagnostics.max_stable_lr(net, F.mse_loss, data, momentum=1.0)
    with pytest.raises(ValueError, match="no batch"):
        nl.diagnostics.max_stable_lr(net, F.mse_loss, [])
    with pytest.raises(ValueError, match="no positive eigenvalue"):
        nl.diagnostics.max_stable_lr(net, lambda o, t: o.mean(), data)  # linear loss: H = 0
