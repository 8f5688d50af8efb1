"""What normlab needs to know about each kind of weighted layer.

A layer's weight has shape ``(out, in/groups, *kernel)`` for ``nn.Linear`` and
``nn.ConvNd``, ``(in, out/groups, *kernel)`` for ``nn.ConvTransposeNd`` and
``(num_embeddings, embedding_dim)`` for ``nn.Embedding``. This module turns
those conventions into three facts per layer:

* ``output_dim(layer)``: the weight dimension that indexes output units
  (1 for transposed convs, 0 otherwise);
* ``fan_in(layer)``: the number of inputs one output unit sums over
  (``in/groups * prod(kernel)`` for every conv kind, the StyleGAN convention,
  ``in_features`` for Linear, 1 for Embedding, whose output reads one row);
* ``linear_map(layer, weight)``: the layer's map ``x -> layer(x)`` without bias
  as a function of an explicit weight, used for the exact operator norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Layer types every normlab method supports (subclasses included).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
)

#: Layers whose weight packs several matrices along the output dim, each normalized as its
#: own matrix: attention's Q/K/V input projection (``in_proj_weight``, shape ``(3E, E)``).
PACKED_LAYERS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` is a layer kind that normlab can reparameterize."""
    if isinstance(module, PACKED_LAYERS):
        return module._qkv_same_embed_dim  # separate q/k/v_proj_weight: not supported
    return isinstance(module, SUPPORTED_LAYERS)


def check_supported(module: nn.Module, name: str = "") -> None:
    """Raise ``TypeError`` naming the layer if its type is not supported."""
    if not is_supported(module):
        allowed = ", ".join(t.__name__ for t in SUPPORTED_LAYERS + PACKED_LAYERS)
        where = f" '{name}'" if name else ""
        detail = (
            " with separate q/k/v projections (kdim/vdim other than embed_dim)"
            if isinstance(module, PACKED_LAYERS)
            else ""
        )
        raise TypeError(
            f"layer{where} of type {type(module).__name__}{detail} is not supported; "
            f"normlab reparameterizes {allowed} (and their subclasses; attention with "
            f"its packed in_proj_weight)"
        )


def param_names(module: nn.Module) -> tuple[str, str]:
    """The names of the layer's weight and bias parameters."""
    if isinstance(module, PACKED_LAYERS):
        return "in_proj_weight", "in_proj_bias"
    return "weight", "bias"


def row_blocks(module: nn.Module) -> int:
    """How many matrices the weight stacks along its output dim (3 for attention's Q/K/V)."""
    return 3 if isinstance(module, PACKED_LAYERS) else 1


def output_dim(module: nn.Module) -> int:
    """Index of the weight dimension holding the output units."""
    return 1 if isinstance(module, _CONV_TRANSPOSE) else 0


def fan_in(module: nn.Module) -> int:
    """Number of inputs each output unit of ``module`` sums over."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Embedding):
        return 1
    if isinstance(module, PACKED_LAYERS):
        return module.embed_dim
    if isinstance(module, _CONV + _CONV_TRANSPOSE):
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    check_supported(module)
    raise AssertionError("unreachable")


def as_matrix(weight: Tensor, dim: int = 0) -> Tensor:
    """``weight`` as a matrix whose rows are indexed by dimension ``dim``.

    ``as_matrix(W, 0)`` is Miyato's ``W.reshape(out, -1)`` for a conv weight;
    ``as_matrix(W, 1)`` is the transposed reshape ``(in, out * k * k)`` that the
    bidirectional variant (BSN) also normalizes by.
    """
    if dim != 0:
        weight = weight.movedim(dim, 0)
    return weight.reshape(weight.shape[0], -1)


def linear_map(module: nn.Module, weight: Tensor) -> Callable[[Tensor], Tensor]:
    """The bias-free linear map of ``module`` with ``weight`` in place of its own.

    For convolutions it honours stride, padding (and padding mode), dilation and
    groups, so its operator norm on an input shape is the layer's true Lipschitz
    constant on that shape.
    """
    if isinstance(module, nn.Linear | nn.MultiheadAttention):
        return lambda x: F.linear(x, weight)
    if isinstance(module, nn.Embedding):
        # A lookup is one-hot @ W: the map from one-hot codes is W^T.
        return lambda x: x @ weight
    if isinstance(module, _CONV):
        return lambda x: module._conv_forward(x, weight, None)
    if isinstance(module, _CONV_TRANSPOSE):
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[
            len(module.kernel_size)
        ]
        return lambda x: fn(
            x,
            weight,
            None,
            module.stride,
            module.padding,
            module.output_padding,
            module.groups,
            module.dilation,
        )
    check_supported(module)
    raise AssertionError("unreachable")


def conv_args(module: nn.Module) -> tuple | None:
    """The geometry arguments of ``aten.convolution_backward`` for ``module``'s bias-free map.

    ``(stride, padding, dilation, transposed, output_padding, groups)``, or None where the
    map is not one zero-padded convolution (Linear, Embedding, padding modes other than
    zeros, string padding such as ``"same"``).
    """
    if not isinstance(module, _CONV + _CONV_TRANSPOSE):
        return None
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    transposed = isinstance(module, _CONV_TRANSPOSE)
    spatial = len(module.kernel_size)
    output_padding = list(module.output_padding) if transposed else [0] * spatial
    return (
        list(module.stride),
        list(module.padding),
        list(module.dilation),
        transposed,
        output_padding,
        module.groups,
    )


def conv_adjoint(args: tuple, y: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``A^T y`` for the conv map ``A`` of ``conv_args`` (``x``: an input of the right shape)."""
    return torch.ops.aten.convolution_backward(y, x, weight, None, *args, [True, False, False])[0]


def input_shape_of(module: nn.Module, x: Tensor) -> tuple[int, ...]:
    """The shape of one sample of the input ``x`` seen by ``module`` (batch dim dropped).

    Convolutions accept unbatched inputs too; those are treated as one sample.
    """
    if isinstance(module, _CONV + _CONV_TRANSPOSE):
        spatial = len(module.kernel_size)
        if x.dim() == spatial + 1:  # unbatched
            return tuple(x.shape)
        return tuple(x.shape[1:])
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    if isinstance(module, PACKED_LAYERS):
        return (module.embed_dim,)
    if isinstance(module, nn.Embedding):
        return (module.num_embeddings,)
    check_supported(module)
    raise AssertionError("unreachable")


def _normalize(x: Tensor, eps: float) -> Tensor:
    return x / x.norm().clamp_min(eps)


@torch.no_grad()
def operator_norm(
    module: nn.Module,
    input_shape: tuple[int, ...],
    weight: Tensor | None = None,
    n_iter: int = 200,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> float:
    """The operator 2-norm of ``module``'s bias-free map on one input of ``input_shape``.

    Power iteration on ``A^T A``, where ``A`` is the layer's map and ``A^T`` its
    adjoint, taken by autograd (so any padding mode is handled). Stops when the
    estimate changes by less than ``tol`` (relative) or after ``n_iter`` steps.

    Example::

        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> operator_norm(conv, (3, 16, 16)) <= torch.linalg.matrix_norm(
        ...     conv.weight.reshape(8, -1), ord=2).item() * 3  # at most sqrt(k*k) x SN
        True
    """
    w = (module.weight if weight is None else weight).detach().float()
    fn = linear_map(module, w)
    x = torch.randn((1, *input_shape), generator=generator, dtype=w.dtype).to(w.device)
    if isinstance(module, nn.Linear | nn.Embedding):
        x = x.reshape(1, -1)
    x = _normalize(x, 1e-12)
    sigma = 0.0
    for _ in range(n_iter):
        x, new_sigma = power_step(fn, x)
        if abs(new_sigma - sigma) <= tol * max(new_sigma, 1e-30):
            sigma = new_sigma
            break
        sigma = new_sigma
    return sigma


def power_step(
    fn: Callable[[Tensor], Tensor], x: Tensor, eps: float = 1e-12
) -> tuple[Tensor, float]:
    """One power-iteration step on ``A^T A`` from unit vector ``x``: ``(new x, ||A x||)``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = fn(xg)
        (back,) = torch.autograd.grad(y, xg, y.detach())
    return _normalize(back.detach(), eps), float(y.detach().norm())
