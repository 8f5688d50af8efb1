"""Weight normalization (Salimans & Kingma, NeurIPS 2016), with data-dependent init.

Each output unit's weight vector is split into a direction ``v`` and a length ``g``::

    W = g * v / ||v||        (norm over every dim but the output dim)

so that gradient steps on ``g`` and ``v`` change the length and the direction of the
weight separately, which conditions the optimisation better. Registering keeps the
layer's function (``g = ||W||``, ``v = W``), like ``torch.nn.utils.parametrizations
.weight_norm``.

``data_init`` adds the paper's data-dependent initialisation (its section 3): on one
batch, layer by layer in forward order, each unit's pre-activation
``t = (v . x) / ||v||`` gets ``g <- s / std[t]`` and ``b <- -mean[t] * s / std[t]``, so
that the unit's output has mean 0 and standard deviation ``s = init_scale`` on
that batch, computed with the layers below already initialised.

Example::

    >>> import torch, normlab as nl
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    >>> mlp = nl.apply(mlp, "wn")
    >>> nl.data_init(mlp, torch.randn(256, 10))  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.reparam._layers import output_dim
from normlab.reparam._wrap import (
    Reparametrization,
    _set,
    check_can_register,
    is_reparametrized,
    register,
    tensor_state,
)

#: Floor of ``||v||`` for all-zero slices (their ``g`` is 0, so their weights stay 0).
ZERO_NORM_EPS = 1e-12


def norm_except_dim(v: Tensor, dim: int) -> Tensor:
    """``||v||`` over every dimension but ``dim``, kept broadcastable to ``v``."""
    if dim == 1 and v.dim() > 2:
        # A transposed conv's units sit in the middle of its weight (in, out, *kernel): a
        # reduction over the contiguous kernel first, then over ``in``, is 3x faster (CPU).
        d0, d1 = v.shape[:2]
        rows = torch.linalg.vector_norm(v.reshape(d0, d1, -1), dim=2)
        return torch.linalg.vector_norm(rows, dim=0).view(1, d1, *([1] * (v.dim() - 2)))
    dims = [d for d in range(v.dim()) if d != dim]
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True)


def _graph_task() -> int:
    """The id of the backward pass under way (-1 outside one)."""
    return torch._C._current_graph_task_id()


class _LengthGrad:
    """What ``_UnitCoef``'s backward hands to ``_UnitTie``'s in the same backward pass:
    ``beta`` with ``dL/dv += beta * v`` the gradient through ``||v||``."""

    __slots__ = ("beta", "task")

    def __init__(self) -> None:
        self.beta: Tensor | None = None
        self.task = -1

    def take(self) -> Tensor | None:
        beta, task = self.beta, self.task
        self.beta, self.task = None, -1
        return beta if task == _graph_task() else None


class _UnitCoef(torch.autograd.Function):
    """``coef = g / ||v||`` per output unit, computed from ``tied`` (see ``_UnitTie``).

    Backward, given ``dL/dcoef`` (autograd's reduction over the layer's output, smaller than
    the weight where this path is taken): ``dL/dg = dL/dcoef / ||v||`` is returned; the path
    through ``||v||``, ``dL/dv_k = -dL/dcoef_k * g_k / ||v_k||^3 * v_k``, is handed as the
    per-unit factor ``beta`` to ``_UnitTie``, which adds ``beta * v`` in place to the
    gradient ``v`` gets through the layer. Taking ``tied`` as input makes this backward run
    before ``_UnitTie``'s in every pass.
    """

    @staticmethod
    def forward(ctx, g, tied, norm, dim, lengths):
        ctx.save_for_backward(g, tied, norm)
        ctx.dim, ctx.lengths = dim, lengths
        return g / norm

    @staticmethod
    def backward(ctx, grad_coef):
        g, tied, norm = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward records this: norm with its graph
            norm = norm_except_dim(tied, ctx.dim)
        grad_g = grad_coef / norm
        ctx.lengths.beta = -grad_g * g / norm.square()
        ctx.lengths.task = _graph_task()
        return grad_g, None, None, None, None


class _UnitTie(torch.autograd.Function):
    """``v`` itself (a view), for ``y = map(x, v) * coef`` with ``coef = _UnitCoef(g, v)``;
    the backward adds ``beta * v`` (the gradient through ``||v||``) to the incoming one."""

    @staticmethod
    def forward(ctx, v, lengths):
        ctx.save_for_backward(v)
        ctx.lengths = lengths
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad_out):
        beta = ctx.lengths.take()
        if beta is None:  # coef took no gradient in this pass
            return grad_out, None
        (v,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward records it: no in-place
            return grad_out + v * beta, None
        # Autograd's own buffer (the layer's weight gradient; hooks on ``tied`` only read it).
        grad = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        return grad.addcmul_(v, beta), None


class WeightNorm(Reparametrization):
    """``W = g * v / ||v||`` with one length ``g`` per slice of ``v`` along ``dim``."""

    method = "wn"
    #: The output path costs wn more than a scalar coefficient: autograd keeps the unscaled
    #: output, reduces it for ``dL/dcoef`` and adds the bias apart, on every call; so the
    #: output is scaled only where it is under half the weight (per-layer timings of
    #: benchmarks/bench_layers.py; a paired A/B of the D step at batch 16: 0.977x).
    output_cost = 2.0

    def __init__(self, weight: nn.Parameter, dim: int) -> None:
        super().__init__()
        self.dim = dim
        with torch.no_grad():
            g = norm_except_dim(weight, dim)
        self.g = nn.Parameter(g, requires_grad=weight.requires_grad)
        self.v = weight
        #: Whether some output unit's weights are all zero (then ``g = 0`` there).
        self.has_zero_slice = bool((g == 0).any())

    def forward(self, layer: nn.Module) -> Tensor:
        # torch._weight_norm computes g * v / ||v|| in one fused kernel (forward and backward);
        # it divides by zero on an all-zero slice (an Embedding's padding row), so layers that
        # have one take the guarded formula.
        if self.has_zero_slice:
            return self.v * (self.g / norm_except_dim(self.v, self.dim).clamp_min(ZERO_NORM_EPS))
        if 0 < self.dim < self.v.dim() - 1:  # the fused kernel takes the first or last dim only
            tied, coef = self._tied_factors()
            return tied * coef
        return torch._weight_norm(self.v, self.g, self.dim)

    @property
    def raw_weight(self) -> Tensor:
        """The raw tensor shaped like the weight: the direction ``v``."""
        return self.v

    def factors(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """``(v, g / ||v||)``: the per-unit lengths scale the output.

        Autograd reduces the output's gradient to ``dL/dcoef``; ``_UnitCoef`` and
        ``_UnitTie`` turn it into ``g``'s gradient and an in-place update of ``v``'s, one
        pass over the weight (autograd through ``||v||`` takes a weight-sized temporary
        and a sum of two gradients).
        """
        # Only registered as factorable without an all-zero slice: ||v|| > 0 here.
        return self._tied_factors()

    def _tied_factors(self) -> tuple[Tensor, Tensor]:
        v, g = self.v, self.g
        norm = self._norm()
        if not (torch.is_grad_enabled() and (v.requires_grad or g.requires_grad)):
            return v.view_as(v), g / norm
        lengths = _LengthGrad()
        tied = _UnitTie.apply(v, lengths)
        return tied, _UnitCoef.apply(g, tied, norm, self.dim, lengths)

    def _norm(self) -> Tensor:
        """``||v||`` (no graph), kept until ``v`` changes: a GAN's generator makes the fake
        batch for D without grad, then runs again for its own step with the same ``v``."""
        key = tensor_state((self.v,))
        cached = self.__dict__.get("_norm_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            norm = norm_except_dim(self.v, self.dim)
        if key is not None:
            _set(self, _norm_cache=(key, norm))
        return norm

    transient_attrs = ("_norm_cache",)

    def effective_bias(self) -> Tensor | None:  # pragma: no cover - owns_bias is False
        return None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def weight_norm(module: nn.Module, dim: int | None = 0, *, name: str = "") -> nn.Module:
    """Put weight normalization on one layer; returns the layer, function unchanged.

    Args:
        module: a Linear, ConvNd, ConvTransposeNd or Embedding layer.
        dim: the weight dimension of the output units, whose slices each get a length
            ``g``. ``0`` for Linear/ConvNd; for ConvTransposeNd the output dim is 1, and
            ``dim=None`` picks each layer's output dim (what ``apply(model, "wn")`` uses).
        name: the layer's qualified name, used in error messages.
    """
    where = f"layer '{name}'" if name else type(module).__name__
    check_can_register(module, name)
    weight: nn.Parameter = module._parameters["weight"]
    if dim is None:
        dim = output_dim(module)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -weight.dim() <= dim < weight.dim():
        raise ValueError(
            f"dim must be an int in [{-weight.dim()}, {weight.dim() - 1}] for {where} "
            f"(weight of shape {tuple(weight.shape)}), got {dim!r}"
        )
    dim = dim % weight.dim()
    reparam = WeightNorm(weight, dim)
    # Lengths along the output dim can scale the layer's output instead of its weight. Not
    # in a grouped transposed conv (its weight slices each feed one channel per group), nor
    # with an all-zero unit (g = 0 there hides the effective weight's gradient from hooks).
    reparam.factorable = (
        dim == output_dim(module)
        and not isinstance(module, nn.Embedding)
        and not (output_dim(module) == 1 and getattr(module, "groups", 1) > 1)
        and not reparam.has_zero_slice
    )
    return register(module, reparam)


def _channel_stats(t: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    dims = [d for d in range(t.dim()) if d != channel_dim]
    return t.mean(dim=dims), t.std(dim=dims, unbiased=False)


@torch.no_grad()
def data_init(
    model: nn.Module, *batch: Tensor, init_scale: float = 1.0, eps: float = 1e-8
) -> nn.Module:
    """Data-dependent init of every weight-normalized layer of ``model`` on one batch.

    Runs ``model(*batch)`` once. As each weight-normalized layer is reached (forward
    order, so the layers below are already initialised), its output is standardised per
    unit: ``g <- init_scale / std[t]`` and ``bias <- -mean[t] * init_scale / std[t]``,
    where ``t`` is the pre-activation with ``g = 1, bias = 0``; the layer's new output is
    passed on. A layer without bias gets only ``g``. Layers called more than once are
    initialised on their first call. Embedding layers are skipped (a lookup has no
    pre-activation statistics). Returns the model.
    """
    if not (isinstance(init_scale, int | float) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if is_reparametrized(m)
        and isinstance(m.reparam, WeightNorm)
        and not isinstance(m, nn.Embedding)
    ]
    if not layers:
        raise ValueError(
            "data_init found no weight-normalized layer in the model: "
            "apply weight normalization first (normlab.apply(model, 'wn'))"
        )
    done: set[int] = set()

    def hook(layer: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if id(layer) in done:
            return None
        done.add(id(layer))
        reparam: WeightNorm = layer.reparam
        channel_dim = (
            output.dim() - 1 if isinstance(layer, nn.Linear) else (1 if output.dim() > 1 else 0)
        )
        if not isinstance(layer, nn.Linear) and output.dim() == len(layer.kernel_size) + 1:
            channel_dim = 0  # unbatched conv input
        bias = layer.bias
        shape = [1] * output.dim()
        shape[channel_dim] = -1
        g = reparam.g.reshape(-1)
        t = output if bias is None else output - bias.reshape(shape)
        t = t / g.reshape(shape)
        mean, std = _channel_stats(t, channel_dim)
        factor = init_scale / (std + eps)
        reparam.g.copy_(factor.reshape(reparam.g.shape))
        if bias is not None:
            bias.copy_(-mean * factor)
            return (t - mean.reshape(shape)) * factor.reshape(shape)
        return t * factor.reshape(shape)

    handles = [m.register_forward_hook(hook) for _, m in layers]
    try:
        model(*batch)
    finally:
        for h in handles:
            h.remove()
    return model
