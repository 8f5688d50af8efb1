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

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` is a layer kind that normlab can reparameterize."""
    return isinstance(module, SUPPORTED_LAYERS)


def check_supported(module: nn.Module, name: str = "") -> None:
    """Raise ``TypeError`` naming the layer if its type is not supported."""
    if not is_supported(module):
        allowed = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        where = f" '{name}'" if name else ""
        raise TypeError(
            f"layer{where} of type {type(module).__name__} is not supported; "
            f"normlab reparameterizes {allowed} (and their subclasses)"
        )


def output_dim(module: nn.Module) -> int:
    """Index of the weight dimension holding the output units."""
    return 1 if isinstance(module, _CONV_TRANSPOSE) else 0


def fan_in(module: nn.Module) -> int:
    """Number of inputs each output unit of ``module`` sums over."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Embedding):
        return 1
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
    if isinstance(module, nn.Linear):
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


def conv_weight_grad(args: tuple, y: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``d <y, A_W x> / dW`` for the conv map of ``conv_args``, shaped like ``weight``."""
    return torch.ops.aten.convolution_backward(y, x, weight, None, *args, [False, True, False])[1]


def sub_conv_weight_grad_(
    grad: Tensor, args: tuple, y: Tensor, x: Tensor, weight: Tensor, coef: Tensor
) -> Tensor:
    """``grad -= coef * d <y, A_W x> / dW`` in place (``grad`` contiguous, like ``weight``).

    For a plain 2-D conv (no groups, not transposed) the weight gradient is the GEMM
    ``Y @ unfold(x)^T``, added straight into ``grad``; elsewhere the conv's own kernel.
    """
    stride, padding, dilation, transposed, _, groups = args
    if weight.dim() == 4 and not transposed and groups == 1 and x.shape[0] == 1:
        cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)
        out = weight.shape[0]
        y_mat = y.reshape(out, -1) * (-coef)
        grad.view(out, -1).addmm_(y_mat, cols[0].t())
        return grad
    return grad.sub_(conv_weight_grad(args, y * coef, x, weight))


#: The stock forwards whose result ``scaled_map`` reproduces (a subclass that overrides
#: ``forward`` keeps its own, with the weight scaled).
STOCK_FORWARDS = frozenset(cls.forward for cls in (nn.Linear, *_CONV, *_CONV_TRANSPOSE))


def output_numel(module: nn.Module, x: Tensor) -> int:
    """How many elements ``module(x)`` has, from shapes alone (convs: up to rounding).

    For the layers of ``STOCK_FORWARDS`` only (an Embedding's output is never scaled).
    """
    if isinstance(module, nn.Linear):
        return x.numel() // module.in_features * module.out_features
    if isinstance(module, _CONV):
        return x.numel() // module.in_channels * module.out_channels // math.prod(module.stride)
    if isinstance(module, _CONV_TRANSPOSE):
        return x.numel() // module.in_channels * module.out_channels * math.prod(module.stride)
    raise TypeError(f"no output size rule for {type(module).__name__}")


def scaled_map(
    module: nn.Module, x: Tensor, weight: Tensor, coef: Tensor, bias: Tensor | None
) -> Tensor:
    """``module``'s output with weight ``coef * weight``, as ``coef * map(x, weight) + bias``.

    ``coef`` is 0-d or holds one value per output unit (any shape with that many values).

    On the CPU the scaling and the bias take one pass over the output (``coef`` read as a
    float). A ``coef`` that requires grad is multiplied by autograd (which then keeps
    the unscaled output for its backward); otherwise the product is done in place.
    """
    out = linear_map(module, weight)(x)
    if isinstance(module, nn.Linear):
        per_unit = (-1,)  # output units along the last dim
    else:
        channel_dim = 1 if x.dim() == len(module.kernel_size) + 2 else 0
        per_unit = (-1, *([1] * (out.dim() - channel_dim - 1)))
    if bias is not None:
        bias = bias.view(per_unit).to(out.dtype)
    if coef.dim():  # one value per output unit
        coef = coef.reshape(per_unit)
    if coef.requires_grad:
        out = out * coef.to(out.dtype)
        return out if bias is None else out + bias
    if out.device.type == "cpu" and not coef.dim():
        if bias is None:
            return out.mul_(float(coef))
        return torch.add(bias, out, alpha=float(coef))
    out = out.mul_(coef.to(out.dtype))
    return out if bias is None else out.add_(bias)


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
