"""Cross-Iteration BatchNorm: BN without a past, Taylor compensation, eval, plumbing, DDP."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab as nl
from normlab.layers import CrossIterationBatchNorm2d as CBN


def _pair(window=4, burnin=0, **conv_kw):
    conv = nn.Conv2d(3, 6, 3, padding=1, **conv_kw)
    return conv, CBN.after(conv, window=window, burnin=burnin)


def test_init_like_batchnorm():
    conv, cbn = _pair()
    bn = nn.BatchNorm2d(6)
    assert isinstance(cbn, nn.BatchNorm2d)
    assert cbn.num_features == 6 and cbn.conv is conv
    assert torch.equal(cbn.weight, torch.ones(6)) and torch.equal(cbn.bias, torch.zeros(6))
    assert cbn.state_dict().keys() == bn.state_dict().keys()
    bn.load_state_dict(cbn.state_dict())  # interchangeable checkpoints


@pytest.mark.parametrize("window,burnin", [(1, 0), (4, 5)])
def test_equals_batchnorm_without_past_iterations(window, burnin):
    conv, cbn = _pair(window=window, burnin=burnin)
    bn = nn.BatchNorm2d(6)
    steps = 5 if window == 1 else burnin - window + 1  # before any stored step is used
    steps = max(steps, 5) if window == 1 else burnin
    for _ in range(steps):
        x = torch.randn(2, 3, 5, 5)
        y = conv(x)
        y_bn = y.detach().clone().requires_grad_(True)
        y_c = y.detach().clone().requires_grad_(True)
        conv(x)  # the hook sees a forward, as in a real model
        out_c, out_b = cbn(y_c), bn(y_bn)
        torch.testing.assert_close(out_c, out_b)
        g = torch.randn_like(out_b)
        out_c.backward(g)
        out_b.backward(g)
        torch.testing.assert_close(y_c.grad, y_bn.grad)
        torch.testing.assert_close(cbn.weight.grad, bn.weight.grad)
        torch.testing.assert_close(cbn.running_mean, bn.running_mean)
        torch.testing.assert_close(cbn.running_var, bn.running_var)
        assert int(cbn.num_batches_tracked) == int(bn.num_batches_tracked)


def test_first_step_equals_batchnorm_and_fills_window():
    conv, cbn = _pair(window=3)
    bn = nn.BatchNorm2d(6)
    x = torch.randn(4, 3, 5, 5)
    y = conv(x)
    torch.testing.assert_close(cbn(y), bn(y))
    torch.testing.assert_close(cbn.running_var, bn.running_var)
    for _ in range(4):
        cbn(conv(torch.randn(4, 3, 5, 5)))
    assert len(cbn.compensated_statistics()) == 2  # window - 1 past iterations kept


def _record(cbn, conv, x):
    cbn.train()
    cbn(conv(x))


@pytest.mark.parametrize(
    "conv_kw",
    [
        dict(in_channels=3, out_channels=6, kernel_size=3, padding=1, bias=True),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
        dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=3, out_channels=5, kernel_size=2, padding="same", dilation=2),
    ],
)
def test_compensation_matches_recomputed_statistics_to_second_order(conv_kw):
    torch.manual_seed(1)
    conv = nn.Conv2d(**conv_kw).double()
    cbn = CBN.after(conv, window=2)
    x_past = torch.randn(3, conv_kw["in_channels"], 7, 7, dtype=torch.float64)
    _record(cbn, conv, x_past)
    w0 = conv.weight.detach().clone()
    b0 = None if conv.bias is None else conv.bias.detach().clone()
    dw = torch.randn_like(w0) * w0.std()
    db = None if b0 is None else torch.randn_like(b0) * 0.1

    def errors(t):
        with torch.no_grad():
            conv.weight.copy_(w0 + t * dw)
            if b0 is not None:
                conv.bias.copy_(b0 + t * db)
            true = conv(x_past)  # the past input under the new weights
        ((mu, nu),) = cbn.compensated_statistics()
        mu_true, nu_true = true.mean((0, 2, 3)), true.square().mean((0, 2, 3))
        mu_err = (mu - mu_true).abs().max().item()
        nu_err = (nu - nu_true).abs().max().item()
        nu_uncompensated = (cbn._past[0].nu - nu_true).abs().max().item()
        return mu_err, nu_err, nu_uncompensated

    e1, e2, e3 = errors(1e-1), errors(1e-2), errors(1e-3)
    # The mean is linear in the weights: compensation is exact.
    assert max(e1[0], e2[0], e3[0]) < 1e-10
    # E[x^2] is quadratic: the error falls 100x per 10x smaller change (first-order exact) ...
    assert 70 < e1[1] / e2[1] < 130 and 70 < e2[1] / e3[1] < 130
    # ... while without compensation it only falls 10x.
    assert 7 < e2[2] / e3[2] < 13
    assert e3[1] < 1e-2 * e3[2]


def test_window_forward_against_independent_average():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    cbn = CBN.after(conv, window=3)
    xs = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    for x in xs[:2]:
        cbn(conv(x))
        with torch.no_grad():
            conv.weight.add_(0.01 * torch.randn_like(conv.weight))
    past = cbn.compensated_statistics()
    y = conv(xs[2])
    out = cbn(y)
    mus = [y.mean((0, 2, 3))] + [m for m, _ in past]
    nus = [y.square().mean((0, 2, 3))] + [n for _, n in past]
    mu = torch.stack(mus).mean(0)
    var = torch.stack(nus).mean(0) - mu**2
    expected = (y - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + cbn.eps)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # And not what plain BN of the current batch would give.
    assert not torch.allclose(out, F.batch_norm(y, None, None, training=True), atol=1e-3)


def test_windows_with_negative_compensated_variance_are_masked():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    cbn = CBN.after(conv, window=3)
    for _ in range(2):
        cbn(conv(torch.randn(2, 3, 6, 6)))
    bad = cbn._past[0]
    bad.nu = bad.mu.square() - 1.0  # a window whose variance comes out negative
    (mu1, nu1) = cbn.compensated_statistics()[1]
    y = conv(torch.randn(2, 3, 6, 6))
    out = cbn(y)
    mu = (y.mean((0, 2, 3)) + mu1) / 2
    var = (y.square().mean((0, 2, 3)) + nu1) / 2 - mu**2
    expected = (y - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + cbn.eps)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_eval_uses_running_statistics():
    conv, cbn = _pair(window=3)
    for _ in range(6):
        out = cbn(conv(torch.randn(2, 3, 5, 5)))
        out.sum().backward()
    cbn.eval()
    rm, rv = cbn.running_mean.clone(), cbn.running_var.clone()
    n_past = len(cbn._past)
    y = conv(torch.randn(2, 3, 5, 5))
    expected = (y - rm[None, :, None, None]) / torch.sqrt(rv[None, :, None, None] + cbn.eps)
    expected = expected * cbn.weight[None, :, None, None] + cbn.bias[None, :, None, None]
    torch.testing.assert_close(cbn(y), expected)
    assert torch.equal(cbn.running_mean, rm) and torch.equal(cbn.running_var, rv)
    assert len(cbn._past) == n_past  # eval does not record


def test_running_var_uses_window_statistics():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 1, bias=False)
    cbn = CBN.after(conv, window=2, rho=0.0)
    x1, x2 = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    with torch.no_grad():
        cbn(conv(x1))
        rm, rv = cbn.running_mean.clone(), cbn.running_var.clone()
        cbn(conv(x2))
        both = torch.cat([conv(x1), conv(x2)])
    m = cbn.momentum
    torch.testing.assert_close(cbn.running_mean, (1 - m) * rm + m * both.mean((0, 2, 3)))
    var_unbiased = both.transpose(0, 1).reshape(4, -1).var(1, unbiased=True)
    torch.testing.assert_close(cbn.running_var, (1 - m) * rv + m * var_unbiased)


def test_rho0_needs_no_conv_and_compensation_needs_one():
    cbn = CBN(4, window=3, rho=0.0)
    for _ in range(3):
        cbn(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="after"):
        CBN(4, window=3)
    with pytest.raises(ValueError):
        CBN.after(nn.Conv2d(3, 5, 1), window=2).__class__(4, conv=nn.Conv2d(3, 5, 1))


def test_error_when_conv_not_run():
    _, cbn = _pair(window=2)
    with pytest.raises(RuntimeError, match="conv"):
        cbn(torch.randn(2, 6, 4, 4))


def test_deepcopy_state_dict_and_pickle_keep_one_conv():
    conv = nn.Conv2d(3, 6, 3, padding=1)
    model = nn.Sequential(conv, CBN.after(conv, window=3), nn.ReLU())
    assert sum(1 for m in model.modules() if isinstance(m, nn.Conv2d)) == 1
    assert all(not k.startswith("1.conv") for k in model.state_dict())
    for _ in range(3):
        model(torch.randn(2, 3, 5, 5)).sum().backward()
    clone = copy.deepcopy(model)
    assert clone[1].conv is clone[0] and clone[0] is not conv
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded[1].conv is loaded[0]
    for m in (clone, loaded):  # the hook follows the copy: training continues there
        x = torch.randn(2, 3, 5, 5)
        m(x).sum().backward()
        assert len(m[1]._past) == 2
    fresh = nn.Sequential(conv2 := nn.Conv2d(3, 6, 3, padding=1), CBN.after(conv2), nn.ReLU())
    fresh.load_state_dict(model.state_dict())
    assert fresh[1]._steps == int(model[1].num_batches_tracked)


def test_trains_in_a_model_with_burnin():
    torch.manual_seed(5)
    conv1 = nn.Conv2d(1, 4, 3, padding=1)
    conv2 = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(
        conv1,
        CBN.after(conv1, window=4, burnin=3),
        nn.ReLU(),
        conv2,
        CBN.after(conv2, window=4, burnin=3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        x = torch.randn(2, 1, 6, 6)
        loss = F.cross_entropy(model(x), torch.randint(0, 2, (2,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert len(model[1]._past) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 6, 3, padding=1).double()
    cbn = CBN.after(conv, window=3)
    model = nn.Sequential(conv, cbn)
    gpu = copy.deepcopy(model).cuda()
    for _ in range(4):
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
        out_c = model(x)
        out_g = gpu(x.cuda())
        torch.testing.assert_close(out_g.cpu(), out_c)
        with torch.no_grad():
            for m in (model, gpu):
                m[0].weight.mul_(1.01)
    torch.testing.assert_close(gpu[1].running_var.cpu(), cbn.running_var)


def test_public_name():
    assert nl.CrossIterationBatchNorm2d is CBN


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from normlab.gan.distributed import leave_group

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)
    torch.set_num_threads(1)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    model = nn.Sequential(
        conv, CBN.after(conv, window=3, burnin=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2)
    )
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(5):
        x = torch.randn(2, 1, 5, 5, generator=g)
        loss = F.cross_entropy(ddp(x), torch.randint(0, 2, (2,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    mu = model[1]._past[0].mu.clone()
    mus = [torch.zeros_like(mu) for _ in range(world)]
    dist.all_gather(mus, mu)
    if rank == 0:
        result = (
            bool(torch.isfinite(loss)),
            float((gathered[0] - gathered[1]).abs().max()),
            float((mus[0] - mus[1]).abs().max()),
        )
        torch.save(result, out)
    del ddp, opt  # the reducer must not outlive the group (see leave_group)
    leave_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_ranks_on_cpu(tmp_path):
    from tests._net import free_port, run_ranks

    out = tmp_path / "result.pt"
    run_ranks(_ddp_worker, (2, free_port(), str(out)), nprocs=2)
    finite, param_diff, stat_diff = torch.load(out)
    assert finite
    assert param_diff == 0.0  # weights stay in sync, so the compensation is consistent
    assert stat_diff > 0.0  # statistics are per rank (no SyncBatchNorm-style reduction)
