"""How a weight is re-expressed: the core of normlab (imports nothing else of it)."""

from normlab.reparam._layers import SUPPORTED_LAYERS, fan_in, operator_norm, output_dim
from normlab.reparam._wrap import Reparametrization, is_reparametrized, reparametrization_of
from normlab.reparam.apply import apply, methods_of, remove, unreparametrized_weights
from normlab.reparam.cache import cached
from normlab.reparam.equalized import EqualizedLR, equalized_lr
from normlab.reparam.registry import (
    D_ONLY_METHODS,
    DEFAULT_SCALE,
    METHODS,
    REGISTRY,
    SCALED_METHODS,
    Method,
)
from normlab.reparam.spectral import ExactSpectralNorm, SpectralNorm, spectral_norm
from normlab.reparam.torch_compat import load_torch_spectral_norm_state
from normlab.reparam.weight_norm import WeightNorm, data_init, weight_norm

__all__ = [
    "DEFAULT_SCALE",
    "D_ONLY_METHODS",
    "METHODS",
    "REGISTRY",
    "SCALED_METHODS",
    "SUPPORTED_LAYERS",
    "EqualizedLR",
    "ExactSpectralNorm",
    "Method",
    "Reparametrization",
    "SpectralNorm",
    "WeightNorm",
    "apply",
    "cached",
    "data_init",
    "equalized_lr",
    "fan_in",
    "is_reparametrized",
    "load_torch_spectral_norm_state",
    "methods_of",
    "operator_norm",
    "output_dim",
    "remove",
    "reparametrization_of",
    "spectral_norm",
    "unreparametrized_weights",
    "weight_norm",
]
