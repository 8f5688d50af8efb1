"""Equalized learning rate (Karras et al., "Progressive Growing of GANs", ICLR 2018).

The raw weight is drawn from ``N(0, 1/lr_multiplier^2)`` and scaled at *every*
forward::

    W_eff = W_raw * gain * lr_multiplier / sqrt(fan_in)
    b_eff = b_raw * lr_multiplier

Adam and RMSProp divide each update by the running scale of its gradient, so the
step taken on ``W_raw`` has about the same size, ``lr``, in every layer. Since every
``W_raw`` also has the same scale, every layer's effective weight then moves by the
same *relative* amount per step, whatever its fan-in: the "dynamic range, and thus
the learning speed, is the same for all weights". Initialising with He's constant
instead (and not scaling at runtime) gives layers of large fan-in small weights
that Adam's fixed-size steps move, relatively, much faster.

Constants (StyleGAN2 ``training/networks.py`` conventions):

* ``gain``: ``sqrt(2)`` is He's gain for ReLU-like activations (ProGAN's default);
  use 1 for a linear output layer (toRGB), or for every layer if the activation
  itself is scaled by ``sqrt(2)`` as in StyleGAN2.
* ``lr_multiplier``: slows a layer's effective learning rate by this factor
  (StyleGAN's mapping network uses 0.01) while keeping its effective init.

Example::

    >>> import normlab as nl, torch.nn as nn
    >>> layer = nl.equalized_lr(nn.Linear(512, 512), lr_multiplier=0.01)
    >>> float(layer.weight.std() * 512 ** 0.5)  # doctest: +SKIP
    1.41...
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normlab.reparam._checks import check_number
from normlab.reparam._layers import fan_in, param_names
from normlab.reparam._wrap import (
    Reparametrization,
    check_can_register,
    register,
)


class EqualizedLR(Reparametrization):
    """``W_eff = W_raw * gain * lr_mul / sqrt(fan_in)``; ``b_eff = b_raw * lr_mul``."""

    method = "eqlr"

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        fan_in: int,
        gain: float,
        lr_multiplier: float,
        owns_bias: bool,
        method: str = "eqlr",
    ) -> None:
        super().__init__()
        self.raw_weight = weight
        self.raw_bias = bias
        self.owns_bias = owns_bias
        self.gain = gain
        self.lr_multiplier = lr_multiplier
        self.fan_in = fan_in
        self.method = method

    @property
    def weight_coef(self) -> float:
        """The runtime coefficient: He's constant times the learning-rate multiplier."""
        return self.gain * self.lr_multiplier / math.sqrt(self.fan_in)

    def forward(self, layer: nn.Module) -> Tensor:
        return self.raw_weight * self.weight_coef

    def coefficient(self, layer: nn.Module) -> float:
        return self.weight_coef

    def effective_bias(self) -> Tensor | None:
        if self.raw_bias is None or self.lr_multiplier == 1.0:
            return self.raw_bias
        return self.raw_bias * self.lr_multiplier

    def extra_repr(self) -> str:
        return f"gain={self.gain:g}, lr_multiplier={self.lr_multiplier:g}, fan_in={self.fan_in}"


def equalized_lr(
    module: nn.Module,
    gain: float = math.sqrt(2),
    lr_multiplier: float = 1.0,
    *,
    name: str = "",
    method: str = "eqlr",
) -> nn.Module:
    """Put equalized learning rate on one layer; returns the layer.

    Re-initialises the raw weight ``N(0, 1/lr_multiplier^2)`` and the bias to zero (the
    layer's previous values are discarded: the method *is* an initialisation). The
    effective weight ``layer.weight`` is ``raw * gain * lr_multiplier / sqrt(fan_in)``.

    Args:
        module: a Linear, ConvNd, ConvTransposeNd or Embedding layer.
        gain: He's gain; ``sqrt(2)`` for ReLU-like activations, 1 for linear outputs.
        lr_multiplier: scales the layer's effective learning rate (0.01 in StyleGAN's mapping).
        name: the layer's qualified name, used in error messages.
        method: the name ``methods_of`` reports.
    """
    where = f"layer '{name}'" if name else type(module).__name__
    gain = float(check_number("gain", gain, where))
    lr_multiplier = float(check_number("lr_multiplier", lr_multiplier, where))
    weight = check_can_register(module, name)
    bias_name = param_names(module)[1]
    owns_bias = bias_name in module._parameters
    bias = module._parameters.get(bias_name)
    with torch.no_grad():
        weight.normal_(0.0, 1.0 / lr_multiplier)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            weight[module.padding_idx].zero_()  # nn.Embedding keeps the padding row at zero
        if bias is not None:
            bias.zero_()
    reparam = EqualizedLR(weight, bias, fan_in(module), gain, lr_multiplier, owns_bias, method)
    return register(module, reparam)
