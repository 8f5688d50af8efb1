"""Spectral normalization and its variants against independent computations."""

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.nn.utils import parametrizations

import normlab as nl
from normlab.reparam import ExactSpectralNorm, _power, set_output_scaling
from normlab.reparam._layers import conv_adjoint, conv_args, conv_weight_grad, linear_map
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


def test_eval_mode_freezes_power_vectors_and_train_mode_updates_them_once_per_update():
    layer = nl.spectral_norm(nn.Conv2d(3, 4, 3))
    x = torch.randn(2, 3, 5, 5)
    layer.eval()
    u = layer.reparam.u0.clone()
    layer(x)
    layer(x)
    assert torch.equal(u, layer.reparam.u0)
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    u_hist = []
    for _ in range(3):
        # D(real) and D(fake) before one backward: one power step, as the BSN code does.
        loss = layer(x).mean() + layer(-x).mean()
        u_hist.append(layer.reparam.u0.clone())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(u, u_hist[0])
    assert not torch.equal(u_hist[0], u_hist[1])


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


@pytest.mark.parametrize(("name", "make", "fan_in", "out_dim", "shape"), CASES, ids=IDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_closed_form_backward_matches_autograd_through_the_formula(
    name, make, fan_in, out_dim, shape, bidirectional
):
    """Gradient of the custom backward vs autograd through u^T M v on explicit reshapes."""
    torch.manual_seed(8)
    layer = nl.spectral_norm(make(), bidirectional=bidirectional, scale=1.4)
    layer.eval()  # frozen vectors: sigma = u^T M v exactly
    raw = layer.reparam.raw_weight
    g = torch.randn_like(raw)
    (layer.weight * g).sum().backward()
    ours = raw.grad.clone()

    w = raw.detach().clone().requires_grad_(True)
    sigmas = []
    for i, row_dim in enumerate([out_dim, 1 - out_dim][: 2 if bidirectional else 1]):
        mat = w.movedim(row_dim, 0).reshape(w.shape[row_dim], -1)
        u, v = getattr(layer.reparam, f"u{i}"), getattr(layer.reparam, f"v{i}")
        sigmas.append(u @ mat @ v)
    sigma = sum(sigmas) / len(sigmas)
    (w * 1.4 / sigma * g).sum().backward()
    torch.testing.assert_close(ours, w.grad, rtol=1e-4, atol=1e-5)


def _explicit_effective_weight(layer, method, w):
    """The effective weight as a formula in ``w`` (autograd differentiates all of it)."""
    reparam = layer.reparam
    if method == "eqlr":
        return w * reparam.weight_coef
    if method == "wn":
        dims = [d for d in range(w.dim()) if d != reparam.dim]
        return reparam.g * w / (w * w).sum(dims, keepdim=True).sqrt()
    if isinstance(reparam, ExactSpectralNorm):  # on Linear, exact SN is SN
        v = reparam.v.clone()
        return w * reparam.scale / linear_map(layer, w)(v).norm()
    row_dims = reparam._row_dims
    sigmas = []
    for i, row_dim in enumerate(row_dims):
        mat = w.movedim(row_dim, 0).reshape(w.shape[row_dim], -1)
        sigmas.append(getattr(reparam, f"u{i}") @ mat @ getattr(reparam, f"v{i}"))
    return w * reparam.scale / (sum(sigmas) / len(sigmas))


CONV_CASES = [c for c in CASES if c[4] is not None]


@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), CONV_CASES, ids=[c[0] for c in CONV_CASES]
)
@pytest.mark.parametrize("method", ["sn", "bssn", "sn_exact", "eqlr", "wn"])
@pytest.mark.parametrize("mode", ["always", "never"])
def test_output_scaling_matches_the_formula(name, make, fan_in, out_dim, shape, method, mode):
    """A layer that scales its output (or its weight) has the formula's output and gradients.

    The layer is called twice (as D on real and fake) before one backward; the vectors are
    frozen (eval), so the formula's ``sigma`` is exactly the one the layer uses.
    """
    torch.manual_seed(11)
    layer = nl.apply(nn.Sequential(make()), method)[0]
    x1, x2 = torch.randn(2, *shape, requires_grad=True), torch.randn(2, *shape)
    layer(x1)  # exact SN sees its input shape
    layer.eval()
    layer.reparam._invalidate()
    raw = layer.reparam.raw_weight
    bias = layer.reparam.raw_bias if method == "eqlr" else layer._parameters.get("bias")
    set_output_scaling(mode)
    try:
        y = layer(x1) * 1.5 + layer(x2)
        expected = mode == "always" and layer.reparam.factorable
        assert (layer.reparam._factors is not None) == expected
    finally:
        set_output_scaling("auto")
    g = torch.randn_like(y)
    (y * g).sum().backward()

    w = raw.detach().clone().requires_grad_(True)
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    x1r = x1.detach().clone().requires_grad_(True)
    if method == "wn":  # the lengths g are trainable too: differentiate a copy
        g_param = layer.reparam.g
        layer.reparam.g = nn.Parameter(g_param.detach().clone())
    w_eff = _explicit_effective_weight(layer, method, w)
    b_eff = b if b is None or method != "eqlr" else b * layer.reparam.lr_multiplier
    plain = layer._normlab_base.forward

    def ref(x):
        # the base class's forward with the explicit effective weight and bias
        clone = copy.copy(layer)
        clone.__class__ = layer._normlab_base
        clone._parameters = {"weight": w_eff, "bias": b_eff}
        return plain(clone, x)

    y_ref = ref(x1r) * 1.5 + ref(x2)
    (y_ref * g).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(raw.grad, w.grad, **tol)
    torch.testing.assert_close(x1.grad, x1r.grad, **tol)
    if bias is not None:
        torch.testing.assert_close(bias.grad, b.grad, **tol)
    if method == "wn":
        torch.testing.assert_close(g_param.grad, layer.reparam.g.grad, **tol)


@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"), CONV_CASES, ids=[c[0] for c in CONV_CASES]
)
def test_bsn_rank_one_terms_in_one_gemm_match_the_formula(
    name, make, fan_in, out_dim, shape, monkeypatch
):
    """The single-GEMM update of big layers, forced on every layer size."""
    monkeypatch.setattr(_power, "BOTH_OUTERS_MIN_NUMEL", 0)
    test_output_scaling_matches_the_formula(name, make, fan_in, out_dim, shape, "bssn", "always")


def test_output_scaling_mode_is_checked():
    with pytest.raises(ValueError, match="'sometimes'"):
        set_output_scaling("sometimes")


def test_weight_and_output_scaling_share_one_power_step():
    """A big batch (weight scaled) and a small one (output scaled) before one backward: one step."""
    torch.manual_seed(12)
    layer = nl.spectral_norm(nn.Linear(16, 8))
    u_before = layer.reparam.u0.clone()
    layer(torch.randn(64, 16))  # output 512 > weight 128: the weight is scaled
    u_after_one = layer.reparam.u0.clone()
    assert layer.reparam._cached is not None and layer.reparam._factors is None
    layer(torch.randn(2, 16))  # output 16 < 128: the output is scaled, from the same step
    assert layer.reparam._factors is not None
    torch.testing.assert_close(layer.reparam.u0, u_after_one, rtol=0, atol=0)
    assert not torch.equal(u_before, u_after_one)


@pytest.mark.parametrize("method", ["sn", "bsn", "sn_exact", "eqlr", "wn"])
def test_weight_grad_hooks_see_the_effective_weight_gradient_either_way(method):
    torch.manual_seed(13)
    grads = {}
    for mode in ("always", "never"):
        torch.manual_seed(13)
        layer = nl.apply(nn.Sequential(nn.Conv2d(3, 6, 3)), method)[0]
        x = torch.randn(2, 3, 5, 5)
        layer(x)
        layer.eval()
        seen = []
        layer.reparam.add_weight_grad_hook(seen.append)
        set_output_scaling(mode)
        try:
            layer(x).square().sum().backward()
        finally:
            set_output_scaling("auto")
        (grads[mode],) = seen
    torch.testing.assert_close(grads["always"], grads["never"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "make", "fan_in", "out_dim", "shape"),
    CONV_CASES[1:],
    ids=[c[0] for c in CONV_CASES[1:]],
)
def test_conv_adjoint_and_weight_gradient_match_autograd(name, make, fan_in, out_dim, shape):
    """The kernels exact SN steps with: <A^T u, v> = <u, A v>, and d(u^T A_W v)/dW."""
    torch.manual_seed(14)
    layer = make()
    args = conv_args(layer)
    assert args is not None
    w = layer.weight.detach().clone().requires_grad_(True)
    v = torch.randn(1, *shape)
    y = linear_map(layer, w)(v)
    u = torch.randn_like(y)
    (u * y).sum().backward()
    torch.testing.assert_close(conv_weight_grad(args, u, v, w.detach()), w.grad)
    back = conv_adjoint(args, u, v, w.detach())
    assert back.shape == v.shape
    torch.testing.assert_close((back * v).sum(), (u * y).sum().detach())


def test_conv_args_leave_non_plain_convs_to_autograd():
    assert conv_args(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")) is None
    assert conv_args(nn.Conv2d(3, 4, 3, padding="same")) is None
    assert conv_args(nn.Linear(3, 4)) is None


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_exact_sn_training_gradient_matches_the_bilinear_formula(padding_mode):
    """In training, sigma = u^T A_W v of the step; its gradient reaches the raw weight."""
    torch.manual_seed(15)
    layer = nl.spectral_norm(
        nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode=padding_mode), exact=True
    )
    x = torch.randn(2, 3, 7, 7)
    layer(x)
    reparam = layer.reparam
    reparam._invalidate()  # the next read takes a fresh step
    v_old = reparam.v.clone()
    raw = reparam.raw_weight
    g = torch.randn_like(raw)
    (layer.weight * g).sum().backward()  # one training step through the weight path
    w = raw.detach().clone().requires_grad_(True)
    fn = linear_map(layer, w)
    with torch.no_grad():
        y = fn(v_old)
        u = y / y.norm()
    v_new = reparam.v
    if padding_mode == "zeros":
        sigma = (u * fn(v_new)).sum()  # the bilinear estimate the step gives
    else:
        sigma = fn(v_new).norm()  # autograd's fallback: ||A v_new||
    (w * reparam.scale / sigma * g).sum().backward()
    torch.testing.assert_close(raw.grad, w.grad, rtol=1e-4, atol=1e-5)
    # the new v is the normalized A^T u of the step
    with torch.enable_grad():
        vv = v_old.clone().requires_grad_(True)
        (back,) = torch.autograd.grad(fn(vv), vv, u if padding_mode == "zeros" else fn(vv))
    torch.testing.assert_close(v_new, back / back.norm(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1),  # the unfold GEMM
        lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2),  # the conv's own kernel
        lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        lambda: nn.Conv1d(3, 4, 3, padding=1),
    ],
    ids=["conv2d", "grouped", "transposed", "conv1d"],
)
@pytest.mark.parametrize("mode", ["always", "never"])
def test_exact_sn_training_step_output_and_gradients_match_the_formula(make, mode):
    torch.manual_seed(16)
    layer = nl.spectral_norm(make(), exact=True)
    spatial = (7,) * (layer.reparam.raw_weight.dim() - 2)
    x = torch.randn(2, layer.in_channels, *spatial, requires_grad=True)
    layer(x)
    reparam = layer.reparam
    reparam._invalidate()
    v_old = reparam.v.clone()
    set_output_scaling(mode)
    try:
        y = layer(x)
        assert (reparam._factors is not None) == (mode == "always")
    finally:
        set_output_scaling("auto")
    gy = torch.randn_like(y)
    (y * gy).sum().backward()

    w = reparam.raw_weight.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    fn = linear_map(layer, w)
    with torch.no_grad():
        u = fn(v_old)
        u = u / u.norm()
    sigma = (u * fn(reparam.v)).sum()
    bias = layer.bias.view(-1, *([1] * len(spatial)))
    y_ref = linear_map(layer, w / sigma)(xr) + bias
    (y_ref * gy).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reparam.raw_weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["sn", "bsn", "sn_exact", "eqlr", "wn"])
@pytest.mark.parametrize("mode", ["always", "never"])
def test_a_forward_while_frozen_is_not_reused_once_trainable(method, mode):
    """The GAN pattern: G's step runs D frozen, then D's step must get weight gradients.

    Was a bug: the cached weight of the frozen forward (no graph to the raw tensors) was
    reused by the next forward, as the raw tensors had not changed, so D's weights got no
    gradient in the D step that followed a G step.
    """
    torch.manual_seed(17)
    model = nl.apply(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)), method)
    x = torch.randn(2, 3, 7, 7)
    set_output_scaling(mode)
    try:
        model(x).sum().backward()  # D's step
        with torch.no_grad():  # and its optimizer step (a new version of every raw tensor)
            for p in model.parameters():
                p.mul_(0.9)
        model.zero_grad()
        model.requires_grad_(False)
        model(x.requires_grad_(True)).sum().backward()  # the G step: grads reach x only
        model.requires_grad_(True)
        model(x.detach()).square().sum().backward()  # D's next step
    finally:
        set_output_scaling("auto")
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_layer_subclass_with_its_own_forward_keeps_it():
    class DoubledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x) + 1

    torch.manual_seed(18)
    layer = nl.spectral_norm(DoubledConv(8, 16, 3))
    x = torch.randn(1, 8, 5, 5)  # output (144) smaller than weight (1152)
    set_output_scaling("always")
    try:
        y = layer(x)
    finally:
        set_output_scaling("auto")
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


@pytest.mark.parametrize("method", ["sn", "bsn", "sn_exact"])
@pytest.mark.parametrize("changed_after_eval", [False, True])
def test_an_eval_pass_before_a_step_leaves_the_step_unchanged(
    method, changed_after_eval, monkeypatch
):
    """G's step runs D frozen in eval; D's next power step starts from that pass's product
    (``M^T u`` of the reshapes with rows along dim 1: BSN's transposed one, and SN's on a
    transposed conv; ``A v`` for exact SN) when the weight is unchanged, and recomputes it
    when the weight changed since. Either way the step must equal one without the eval
    pass."""
    from normlab.reparam import spectral

    reused = []
    real_step, real_image = spectral.power_step_, ExactSpectralNorm._kept_image

    def step_spy(w3, row_dim, u, v, eps, mt_u=None):
        reused.append(mt_u is not None)
        return real_step(w3, row_dim, u, v, eps, mt_u)

    def image_spy(self):
        image = real_image(self)
        reused.append(image is not None)
        return image

    monkeypatch.setattr(spectral, "power_step_", step_spy)
    monkeypatch.setattr(ExactSpectralNorm, "_kept_image", image_spy)
    torch.manual_seed(21)
    layers = [nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.ConvTranspose2d(6, 4, 4), nn.Flatten()]
    a = nl.apply(nn.Sequential(*layers, nn.Linear(4 * 6 * 6, 5)), method)
    x = torch.randn(2, 3, 7, 7)
    a(x).sum().backward()
    b = copy.deepcopy(a)

    def optimizer_step(model):
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.add_(0.05 * torch.sin(torch.arange(p.numel()).view_as(p) + i))
                p.grad = None

    optimizer_step(a)
    optimizer_step(b)
    a.eval().requires_grad_(False)  # the G step through a frozen D
    a(x.clone().requires_grad_(True)).sum().backward()
    a.train().requires_grad_(True)
    if changed_after_eval:
        for model in (a, b):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9)
    reused.clear()
    ya, yb = a(x), b(x)
    assert any(reused[: len(reused) // 2]) != changed_after_eval
    torch.testing.assert_close(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb, msg=name)
