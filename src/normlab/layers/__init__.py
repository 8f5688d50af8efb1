"""Modules of the other source papers: Fixup, Cross-Iteration BatchNorm, Class Normalization.

Nothing here knows of GANs or of the rest of normlab.
"""

from normlab.layers.cbn import CrossIterationBatchNorm2d
from normlab.layers.class_norm import ClassNormMLP, ClassStandardization, normalize_attributes
from normlab.layers.fixup import (
    FixupBasicBlock,
    FixupBottleneck,
    FixupResNet,
    fixup_init,
    fixup_param_groups,
    fixup_resnet,
    fixup_scale,
)

__all__ = [
    "ClassNormMLP",
    "ClassStandardization",
    "CrossIterationBatchNorm2d",
    "FixupBasicBlock",
    "FixupBottleneck",
    "FixupResNet",
    "fixup_init",
    "fixup_param_groups",
    "fixup_resnet",
    "fixup_scale",
    "normalize_attributes",
]
