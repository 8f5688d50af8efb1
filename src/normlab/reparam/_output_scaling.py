"""Speed helper: run a layer whose effective weight is a coefficient times its raw weight
by scaling its *output* instead of its weight.

SN, SSN, BSN, BSSN, exact SN and eqlr have ``W_eff = c * W`` with ``c`` a scalar. A
layer's map ``A`` is linear in its weight, so::

    A_{c W}(x) + b  =  c * A_W(x) + b

The right side never forms ``c * W``. Where the output has fewer elements than the weight
(the deep layers of a CNN at small batch, the last Linear of a discriminator) it replaces
the weight-sized product of the forward and the two weight-sized products of its backward
(``c * dL/dW_eff`` and ``<dL/dW_eff, W>``) by output-sized ones. Both sides are plain
autograd, so derivatives are exact at every order, and they agree to float rounding
(``tests/reparam/test_output_scaling.py`` checks outputs, gradients and Hessian-vector
products against the weight-scaled computation; ``benchmarks/bench_step.py`` shows the
gain: 3-5 points of the standard CNN's D step at batch 16 for BSN and eqlr). Nothing a user
sees depends on which side runs: the coefficient is computed from the current raw tensors at
every forward, with the same power steps. (Weight normalization's per-unit coefficient was
tried too: its per-channel reductions over the output made the D step slower, so wn always
scales its weight.)

The layer's own forward runs instead (the weight-scaled side) whenever the rewrite is not
plainly the same computation: a layer class other than exactly Linear / ConvNd /
ConvTransposeNd (a subclass may override ``forward``), extra call arguments
(``output_size``), autocast (the weight is cast before the product there), ``torch.compile``,
gradient hooks on the effective weight (the instruments need that tensor), or an output at
least as large as the weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normlab.reparam._layers import linear_map

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _output_numel(layer: nn.Module, x: Tensor) -> int | None:
    """The number of elements ``layer(x)`` will have; None for an input the layer's own
    forward should judge (an empty or ill-shaped one: it raises its usual error)."""
    if x.numel() == 0:
        return None
    if isinstance(layer, nn.Linear):
        if x.dim() == 0 or x.shape[-1] != layer.in_features:
            return None
        return x.numel() // layer.in_features * layer.out_features
    n = len(layer.kernel_size)
    if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != layer.in_channels:
        return None
    spatial = x.shape[-n:]
    lead = x.numel() // (math.prod(spatial) * layer.in_channels)  # the batch (1 if none)
    sizes = []
    for i, size in enumerate(spatial):
        k, s, d = layer.kernel_size[i], layer.stride[i], layer.dilation[i]
        if isinstance(layer, _CONV_TRANSPOSE):
            p, op = layer.padding[i], layer.output_padding[i]
            sizes.append((size - 1) * s - 2 * p + d * (k - 1) + op + 1)
        elif layer.padding == "same":
            sizes.append(size)
        else:
            p = 0 if layer.padding == "valid" else layer.padding[i]
            sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return lead * layer.out_channels * math.prod(sizes)


def _per_channel(bias: Tensor, layer: nn.Module) -> Tensor:
    """The bias shaped to broadcast against the layer's output (batched or not)."""
    if isinstance(layer, nn.Linear):
        return bias
    return bias.reshape(-1, *([1] * len(layer.kernel_size)))


def output_scaled_forward(layer: nn.Module, reparam: Any, args: tuple, kwargs: dict) -> Any:
    """``c * A_W(x) + b`` for ``layer(*args, **kwargs)``, or None where the layer's own
    forward must run (see the module docstring)."""
    base = layer._normlab_base
    if (
        kwargs
        or len(args) != 1
        or not isinstance(args[0], Tensor)
        or base not in (nn.Linear, *_CONV, *_CONV_TRANSPOSE)
        or reparam._weight_grad_hooks
        or torch.compiler.is_compiling()
        or autocast_enabled(args[0].device.type)
    ):
        return None
    x = args[0]
    weight = reparam.raw_weight
    numel = _output_numel(layer, x)
    if numel is None or numel >= weight.numel():
        return None
    coefficient = reparam.effective_coefficient(layer)
    if coefficient is None:
        return None
    y = linear_map(layer, weight)(x)
    bias = layer.bias
    if bias is None:
        return y * coefficient
    if isinstance(coefficient, Tensor):  # a 0-dim tensor (the SN family): b + y * c
        return torch.addcmul(_per_channel(bias, layer), y, coefficient)
    return torch.add(_per_channel(bias, layer), y, alpha=coefficient)  # a constant (eqlr)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()
