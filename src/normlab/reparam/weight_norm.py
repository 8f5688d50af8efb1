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
    check_can_register,
    is_reparametrized,
    register,
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


class WeightNorm(Reparametrization):
    """``W = g * v / ||v||`` with one length ``g`` per slice of ``v`` along ``dim``.

    Plain autograd through the formula: exact derivatives of every order (PyTorch's fused
    ``torch._weight_norm`` kernel returns wrong second derivatives through a conv, see
    ``shared/benchmarks.md``). An all-zero slice (an Embedding's padding row) has
    ``||v|| = 0``, floored at ``ZERO_NORM_EPS``, so its weights stay 0.
    """

    def __init__(self, weight: nn.Parameter, dim: int, method: str = "wn") -> None:
        super().__init__()
        self.dim = dim
        self.method = method
        with torch.no_grad():
            g = norm_except_dim(weight, dim)
        self.g = nn.Parameter(g, requires_grad=weight.requires_grad)
        self.v = weight

    def forward(self, layer: nn.Module) -> Tensor:
        return self.v * (self.g / norm_except_dim(self.v, self.dim).clamp_min(ZERO_NORM_EPS))

    @property
    def raw_weight(self) -> Tensor:
        """The raw tensor shaped like the weight: the direction ``v``."""
        return self.v

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def weight_norm(
    module: nn.Module, dim: int | None = 0, *, name: str = "", method: str = "wn"
) -> nn.Module:
    """Put weight normalization on one layer; returns the layer, function unchanged.

    Args:
        module: a Linear, ConvNd, ConvTransposeNd or Embedding layer.
        dim: the weight dimension of the output units, whose slices each get a length
            ``g``. ``0`` for Linear/ConvNd; for ConvTransposeNd the output dim is 1, and
            ``dim=None`` picks each layer's output dim (what ``apply(model, "wn")`` uses).
        name: the layer's qualified name, used in error messages.
        method: the name ``methods_of`` reports.
    """
    where = f"layer '{name}'" if name else type(module).__name__
    weight = check_can_register(module, name)
    if dim is None:
        dim = output_dim(module)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -weight.dim() <= dim < weight.dim():
        raise ValueError(
            f"dim must be an int in [{-weight.dim()}, {weight.dim() - 1}] for {where} "
            f"(weight of shape {tuple(weight.shape)}), got {dim!r}"
        )
    dim = dim % weight.dim()
    return register(module, WeightNorm(weight, dim, method))


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
        if isinstance(layer, nn.MultiheadAttention):
            raise ValueError(
                "data_init does not initialise attention layers (their output is not one "
                "linear map); exclude them from 'wn' or initialise them yourself"
            )
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
