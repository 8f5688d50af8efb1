"""normlab: weight normalization techniques for stable GAN training.

The public API, re-exported from the sub-packages (nothing is defined here)::

    import normlab as nl
    D = nl.apply(D, "bssn", scale=1.2)
    G = nl.apply(G, "eqlr")
"""

from normlab.reparam import (
    DEFAULT_SCALE,
    METHODS,
    SUPPORTED_LAYERS,
    apply,
    data_init,
    equalized_lr,
    is_reparametrized,
    methods_of,
    remove,
    spectral_norm,
    weight_norm,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SCALE",
    "METHODS",
    "SUPPORTED_LAYERS",
    "__version__",
    "apply",
    "data_init",
    "equalized_lr",
    "is_reparametrized",
    "methods_of",
    "remove",
    "spectral_norm",
    "weight_norm",
]
