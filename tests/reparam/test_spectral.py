"""Spectral normalization and its variants against independent computations."""

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.nn.utils import parametrizations

import normlab as nl
from tests.reparam._layers import layer_cases

CASES = layer_cases()
IDS = [c[0] for c in CASES]


def true_sigma(weight: torch.Tensor, out_dim: int) -> float:
    """Largest singular value of the (out, -1) reshape, by SVD."""
    mat = weight.detach().movedim(out_dim, 0).reshape(weight.shape[out_dim], -1)
    return torch.linalg.matrix_norm(mat.double(), ord=2).item()


def converge(layer, shape, steps=200):
    layer.train()
    with torch.no_grad():
        for _ in range(steps):
            if shape is None:
                layer(torch.randint(0, layer.num_embeddings, (2,)))
            else:
                layer(torch.randn(1, *shape))


@pytest.mark.parametrize(("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=IDS)
def test_sn_effective_sigma_is_one(name, make, fan_in, out_dim, shape):
    layer = nl.spectral_norm(make())
    converge(layer, shape)
    assert true_sigma(layer.weight, out_dim) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize(("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=IDS)
def test_ssn_scales_the_normalized_weight(name, make, fan_in, out_dim, shape):
    layer = nl.spectral_norm(make(), scale=1.7)
    converge(layer, shape)
    assert true_sigma(layer.weight, out_dim) == pytest.approx(1.7, rel=1e-4)


@pytest.mark.parametrize(("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=IDS)
def test_bsn_divides_by_mean_of_both_reshapes(name, make, fan_in, out_dim, shape):
    base = make()
    raw = base.weight.detach().clone()
    layer = nl.spectral_norm(base, bidirectional=True, scale=1.3)
    layer.eval()
    # Converge the power vectors without changing the weight.
    layer.train()
    converge(layer, shape)
    layer.eval()
    sigma_out = true_sigma(raw, out_dim)
    sigma_in = true_sigma(raw, 1 - out_dim)
    expected = raw * 1.3 / ((sigma_out + sigma_in) / 2)
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-4, atol=1e-6)


def test_bsn_equals_sn_for_linear():
    torch.manual_seed(1)
    a, b = nn.Linear(20, 9), nn.Linear(20, 9)
    b.load_state_dict(a.state_dict())
    nl.spectral_norm(a)
    nl.spectral_norm(b, bidirectional=True)
    converge(a, (20,))
    converge(b, (20,))
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)


def test_matches_pytorch_spectral_norm_step_by_step():
    """Same weight and power vectors: each training forward gives PyTorch's output.

    PyTorch updates u before v within a step, Miyato's algorithm (ours) v before u: both
    converge to the same singular pair: with enough steps per forward both are converged
    and agree to float precision.
    """
    torch.manual_seed(2)
    ours, theirs = nn.Conv2d(4, 6, 3), nn.Conv2d(4, 6, 3)
    theirs.load_state_dict(ours.state_dict())
    nl.spectral_norm(ours, n_power_iterations=20)
    parametrizations.spectral_norm(theirs, n_power_iterations=20)
    param = theirs.parametrizations.weight[0]
    with torch.no_grad():
        ours.reparam.u0.copy_(param._u)
        ours.reparam.v0.copy_(param._v)
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(5):
        x = torch.randn(2, 4, 7, 7)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
        opt_a.zero_grad()
        opt_b.zero_grad()
        (ya**2).sum().backward()
        (yb**2).sum().backward()
        ga, gb = ours.reparam.raw_weight.grad, theirs.parametrizations.weight.original.grad
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-4 * gb.abs().max().item())
        opt_a.step()
        opt_b.step()


def test_gradient_flows_through_sigma():
    """d/dW of f(W / sigma(W)) includes the sigma term: compare with a closed form."""
    torch.manual_seed(3)
    layer = nl.spectral_norm(nn.Linear(6, 5, bias=False))
    layer.eval()  # freeze u, v: sigma = u^T W v exactly
    u, v = layer.reparam.u0.clone(), layer.reparam.v0.clone()
    w = layer.reparam.raw_weight.detach().clone()
    g = torch.randn(5, 6)
    (layer.weight * g).sum().backward()
    sigma = u @ w @ v
    # d/dW <g, W / sigma> = g / sigma - <g, W> / sigma^2 * u v^T
    expected = g / sigma - (g * w).sum() / sigma**2 * torch.outer(u, v)
    torch.testing.assert_close(layer.reparam.raw_weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_warm_start_gives_a_good_eval_before_training():
    torch.manual_seed(4)
    conv = nn.Conv2d(64, 64, 3)
    sigma = true_sigma(conv.weight, 0)
    nl.spectral_norm(conv).eval()
    est = conv.reparam.last_sigmas or None
    conv(torch.randn(1, 64, 5, 5))
    est = conv.reparam.last_sigmas[0].item()
    assert est <= sigma * (1 + 1e-5)
    assert est > 0.8 * sigma  # without the warm-up one step is off by far more


def test_eval_mode_freezes_power_vectors_and_train_mode_steps_at_every_forward():
    torch.manual_seed(8)
    layer = nl.spectral_norm(nn.Conv2d(3, 4, 3), n_power_iterations=2)
    x = torch.randn(2, 3, 5, 5)
    layer.eval()
    u = layer.reparam.u0.clone()
    layer(x)
    layer(x)
    assert torch.equal(u, layer.reparam.u0)
    layer.train()
    with torch.no_grad():  # a new weight, so that each step moves the vectors visibly
        layer.reparam.raw_weight.add_(torch.randn_like(layer.reparam.raw_weight))
    # Each training forward takes n_power_iterations steps from the current vectors.
    w3 = layer.reparam.raw_weight.detach().reshape(4, -1)
    for _ in range(3):
        u_ref = layer.reparam.u0.clone()
        for _ in range(2):
            v_ref = nn.functional.normalize(w3.t() @ u_ref, dim=0)
            u_ref = nn.functional.normalize(w3 @ v_ref, dim=0)
        layer(x)
        torch.testing.assert_close(layer.reparam.u0, u_ref)
        torch.testing.assert_close(layer.reparam.v0, v_ref)


def test_layer_used_twice_then_separate_backwards():
    layer = nl.spectral_norm(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    a = layer(x).sum()
    a.backward()
    b = layer(x * 2).sum()  # the first backward freed that graph: a fresh weight is computed
    b.backward()
    assert layer.reparam.raw_weight.grad is not None


def operator_matrix(layer, shape):
    """The layer's bias-free linear map on one input of `shape`, as a dense matrix."""
    w = layer.weight.detach()
    from normlab.reparam._layers import linear_map

    fn = linear_map(layer, w)
    x = torch.zeros(1, *shape, dtype=torch.float64)
    jac = jacobian(lambda t: fn(t.float()).double(), x)
    out_numel = jac.shape[: jac.dim() - x.dim()].numel()
    return jac.reshape(out_numel, x.numel())


EXACT_CASES = [
    ("conv2d_pad", lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 6, 6)),
    ("conv2d_stride", lambda: nn.Conv2d(3, 4, 4, stride=2, padding=1), (3, 8, 8)),
    ("conv2d_dil_groups", lambda: nn.Conv2d(4, 6, 3, dilation=2, groups=2), (4, 7, 7)),
    ("conv2d_circular", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    ("conv1d", lambda: nn.Conv1d(3, 5, 3, padding=2), (3, 8)),
    ("convT2d", lambda: nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), (4, 3, 3)),
]


@pytest.mark.parametrize(("name", "make", "shape"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_exact_sn_normalizes_the_operator_norm(name, make, shape):
    torch.manual_seed(5)
    layer = nl.spectral_norm(make(), exact=True, scale=1.5)
    converge(layer, shape, steps=300)
    layer.eval()
    sigma = torch.linalg.matrix_norm(operator_matrix(layer, shape), ord=2).item()
    assert sigma == pytest.approx(1.5, rel=1e-3)
    assert layer.reparam.input_shape == shape


def test_exact_sn_is_stricter_than_sn_on_stride_one_convs():
    torch.manual_seed(6)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    sn, exact = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
    sn.load_state_dict(conv.state_dict())
    exact.load_state_dict(conv.state_dict())
    nl.spectral_norm(sn)
    nl.spectral_norm(exact, exact=True)
    converge(sn, (8, 8, 8))
    converge(exact, (8, 8, 8))
    # Exact SN divides by a larger number: its weights are smaller.
    assert exact.weight.norm() < sn.weight.norm()


def test_exact_sn_restarts_on_a_new_input_shape_and_survives_state_dict():
    layer = nl.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), exact=True)
    layer(torch.randn(1, 2, 5, 5))
    assert layer.reparam.input_shape == (2, 5, 5)
    layer(torch.randn(1, 2, 7, 7))
    assert layer.reparam.input_shape == (2, 7, 7)
    fresh = nl.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), exact=True)
    fresh.load_state_dict(layer.state_dict())
    layer.eval()
    fresh.eval()
    x = torch.randn(1, 2, 7, 7)
    torch.testing.assert_close(layer(x), fresh(x))


def test_exact_sn_before_any_input_is_a_clear_error():
    layer = nl.spectral_norm(nn.Conv2d(2, 3, 3), exact=True)
    with pytest.raises(RuntimeError, match="input shape"):
        _ = layer.weight


def test_exact_sn_on_linear_is_sn():
    layer = nl.spectral_norm(nn.Linear(5, 4), exact=True)
    assert layer.reparam.method == "sn_exact"
    converge(layer, (5,))
    assert true_sigma(layer.weight, 0) == pytest.approx(1.0, rel=1e-4)


def test_autocast_keeps_sigma_in_float32():
    torch.manual_seed(7)
    layer = nl.spectral_norm(nn.Linear(64, 64))
    converge(layer, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 64))
    assert y.dtype == torch.bfloat16
    (sigma,) = layer.reparam.last_sigmas
    assert sigma.dtype == torch.float32
    assert sigma.item() == pytest.approx(true_sigma(layer.reparam.raw_weight, 0), rel=1e-4)


def test_zero_weight_gives_zero_not_nan():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.zero_()
    nl.spectral_norm(layer)
    assert torch.isfinite(layer.weight).all()


@pytest.mark.parametrize("method", ["sn", "bsn", "sn_exact", "eqlr", "wn"])
def test_a_forward_while_frozen_is_not_reused_once_trainable(method):
    """The GAN pattern: G's step runs D frozen, then D's step must get weight gradients.

    Was a bug: the cached weight of the frozen forward (no graph to the raw tensors) was
    reused by the next forward, as the raw tensors had not changed, so D's weights got no
    gradient in the D step that followed a G step.
    """
    torch.manual_seed(17)
    model = nl.apply(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)), method)
    x = torch.randn(2, 3, 7, 7)
    model(x).sum().backward()  # D's step
    with torch.no_grad():  # and its optimizer step (a new version of every raw tensor)
        for p in model.parameters():
            p.mul_(0.9)
    model.zero_grad()
    model.requires_grad_(False)
    model(x.requires_grad_(True)).sum().backward()  # the G step: grads reach x only
    model.requires_grad_(True)
    model(x.detach()).square().sum().backward()  # D's next step
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_layer_subclass_with_its_own_forward_keeps_it():
    class DoubledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x) + 1

    torch.manual_seed(18)
    layer = nl.spectral_norm(DoubledConv(8, 16, 3))
    x = torch.randn(1, 8, 5, 5)
    layer.eval()  # no power step: the weight read below is the one the forward used
    y = layer(x)
    expected = 2 * nn.functional.conv2d(x, layer.weight, layer.bias) + 1
    torch.testing.assert_close(y, expected)


def test_exact_sn_on_a_zero_map_only_scales_the_weight():
    """A transposed conv whose padding crops every tap on a 1x1 input: its map is zero."""
    conv = nn.ConvTranspose2d(2, 3, 1, stride=3, padding=1, output_padding=2)
    layer = nl.spectral_norm(conv, exact=True, scale=1.5)
    x = torch.randn(4, 2, 1, 1)
    y = layer(x)
    assert y.shape[-2:] == (1, 1) and not (y - layer.bias.view(1, -1, 1, 1)).any()
    raw = layer.reparam.raw_weight
    torch.testing.assert_close(layer.weight, raw * 1.5)
    y.sum().backward()
    assert torch.isfinite(raw.grad).all()
