"""How a weight is re-expressed: the core of normlab (imports nothing else of it)."""

from normlab.reparam._layers import SUPPORTED_LAYERS, fan_in, operator_norm, output_dim
from normlab.reparam._wrap import (
    Reparametrization,
    is_reparametrized,
    reparametrization_of,
    set_output_scaling,
    set_weight_cache,
)
from normlab.reparam.apply import DEFAULT_SCALE, METHODS, apply, methods_of, remove
from normlab.reparam.equalized import EqualizedLR, equalized_lr
from normlab.reparam.spectral import ExactSpectralNorm, SpectralNorm, spectral_norm
from normlab.reparam.torch_compat import load_torch_spectral_norm_state
from normlab.reparam.weight_norm import WeightNorm, data_init, weight_norm

__all__ = [
    "DEFAULT_SCALE",
    "METHODS",
    "SUPPORTED_LAYERS",
    "EqualizedLR",
    "ExactSpectralNorm",
    "Reparametrization",
    "SpectralNorm",
    "WeightNorm",
    "apply",
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
    "set_output_scaling",
    "set_weight_cache",
    "spectral_norm",
    "weight_norm",
]
