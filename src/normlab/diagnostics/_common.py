"""What the instruments share: which layers carry weights, their effective weights, and
the Lipschitz constants of the parameter-free modules between them."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normlab.reparam import SUPPORTED_LAYERS, is_reparametrized, reparametrization_of
from normlab.reparam.spectral import SpectralNorm

#: Activations (and other parameter-free maps) by their Lipschitz constant.
_ONE_LIPSCHITZ = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Softsign,
)
_CONSTANT: dict[type[nn.Module], float] = {
    nn.Sigmoid: 0.25,
    nn.Hardsigmoid: 1.0 / 6.0,
    nn.SiLU: 1.0998,  # max of d/dx x*sigmoid(x)
    nn.GELU: 1.1289,  # max of d/dx x*Phi(x)
    nn.Mish: 1.0886,
    nn.Hardswish: 1.5,
}


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` for every single-weight layer of ``model`` (Linear, conv,
    Embedding; attention's packed projection is not one matrix and is left out), in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)]


def layer_label(name: str) -> str:
    """A printable name (``""``, the model itself, becomes ``"."``)."""
    return name or "."


@torch.no_grad()
def effective_weight(layer: nn.Module) -> Tensor:
    """The weight ``layer`` computes with, read without side effects (no power-iteration step).

    Exact SN layers need to have seen one input first (their norm depends on its shape).
    """
    reparam = reparametrization_of(layer)
    if reparam is None:
        return layer.weight.detach()
    was_training = reparam.training
    reparam.eval()
    try:
        return layer.weight.detach()
    finally:
        reparam.train(was_training)


def method_of(layer: nn.Module) -> str:
    """The layer's normlab method ("none" for a plain layer)."""
    reparam = reparametrization_of(layer)
    return reparam.method if reparam is not None else "none"


def spectral_sigmas(layer: nn.Module) -> tuple[float, ...] | None:
    """Effective sigmas of an SN-family layer from its last forward, without computing any.

    Returns ``(sigma,)`` for SN/SSN (the effective weight's ``(out, -1)`` reshape), and
    ``(sigma, sigma_t)`` for BSN/BSSN (``sigma_t``: the transposed ``(in, out*k*k)`` reshape),
    i.e. ``scale * s_i / s_used`` with the layer's own power-iteration estimates ``s_i``.
    None for other layers, or before the layer's first forward.
    """
    reparam = reparametrization_of(layer)
    if not isinstance(reparam, SpectralNorm) or not reparam.last_sigmas:
        return None
    sig = reparam.last_sigmas
    used = sig[0] if len(sig) == 1 else (sig[0] + sig[1]) / 2
    used = used.clamp_min(reparam.eps)
    return tuple((reparam.scale * s / used) for s in sig)  # tensors; the caller batches .tolist()


def module_lipschitz(module: nn.Module) -> float | None:
    """Lipschitz constant of a parameter-free (or normalization) leaf module, None if unknown.

    BatchNorm counts with its eval-mode affine map, ``max |gamma| / sqrt(running_var + eps)``
    (in training mode it uses batch statistics and has no per-sample constant). Dropout in
    training mode scales by ``1 / (1 - p)``. Pooling with ``stride >= kernel`` (no overlap)
    is 1-Lipschitz.
    """
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.ELU | nn.CELU):
        return max(1.0, float(module.alpha))
    for cls, c in _CONSTANT.items():
        if isinstance(module, cls):
            return c
    if isinstance(module, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d):
        return 1.0 / (1.0 - module.p) if module.training and module.p < 1 else 1.0
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_var is None:
            return None
        scale = (module.running_var + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach().abs()
        return float(scale.max())
    if isinstance(
        module,
        nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d | nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d,
    ):
        k = module.kernel_size
        s = module.stride if module.stride is not None else k
        ks = k if isinstance(k, tuple) else (k,)
        ss = s if isinstance(s, tuple) else (s,)
        return 1.0 if all(si >= ki for si, ki in zip(ss, ks)) else None
    if isinstance(module, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d):
        return 1.0
    return None


def activation_constant(model: nn.Module) -> tuple[float, list[str]]:
    """Product of the Lipschitz constants of ``model``'s parameter-free leaf modules.

    Returns ``(constant, unknown)``: ``unknown`` names leaf modules without a known
    constant (the constant is then ``nan``). Weighted layers are skipped (their operator
    norms enter separately). Functional calls inside ``forward`` (``F.relu``) and residual
    additions are invisible here: the bound is the one of a chain of layers.
    """
    c = 1.0
    unknown: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, SUPPORTED_LAYERS) or is_reparametrized(m):
            continue
        if any(True for _ in m.children()):
            continue
        if name.endswith(".reparam") or name == "reparam":
            continue
        lip = module_lipschitz(m)
        if lip is None:
            unknown.append(layer_label(name))
        else:
            c *= lip
    return (math.nan if unknown else c), unknown


def is_conv(layer: nn.Module) -> bool:
    return isinstance(
        layer,
        nn.Conv1d
        | nn.Conv2d
        | nn.Conv3d
        | nn.ConvTranspose1d
        | nn.ConvTranspose2d
        | nn.ConvTranspose3d,
    )
