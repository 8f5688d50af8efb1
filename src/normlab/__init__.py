"""normlab: weight normalization techniques for stable GAN training.

The public API, re-exported from the sub-packages (nothing is defined here)::

    import normlab as nl
    D = nl.apply(D, "bssn", scale=1.2)
    G = nl.apply(G, "eqlr")
"""

from normlab import diagnostics
from normlab.layers import (
    ClassNormMLP,
    ClassStandardization,
    CrossIterationBatchNorm2d,
    FixupBasicBlock,
    FixupBottleneck,
    fixup_init,
    fixup_resnet,
)
from normlab.reparam import (
    DEFAULT_SCALE,
    METHODS,
    REGISTRY,
    SUPPORTED_LAYERS,
    apply,
    cached,
    data_init,
    equalized_lr,
    is_reparametrized,
    load_torch_spectral_norm_state,
    methods_of,
    remove,
    spectral_norm,
    weight_norm,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SCALE",
    "METHODS",
    "REGISTRY",
    "SUPPORTED_LAYERS",
    "ClassNormMLP",
    "ClassStandardization",
    "CrossIterationBatchNorm2d",
    "FixupBasicBlock",
    "FixupBottleneck",
    "__version__",
    "apply",
    "cached",
    "data_init",
    "diagnostics",
    "equalized_lr",
    "fixup_init",
    "fixup_resnet",
    "is_reparametrized",
    "load_torch_spectral_norm_state",
    "methods_of",
    "remove",
    "spectral_norm",
    "weight_norm",
]
