"""The one table of methods: what ``apply``, the config, the command line and the study read.

Each entry says which function builds the method on a layer and with which fixed
arguments, which family it belongs to, whether the lab puts it on the discriminator only,
and whether it takes the constant ``scale`` (Lin et al.'s ``c``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normlab.reparam.equalized import equalized_lr
from normlab.reparam.spectral import spectral_norm
from normlab.reparam.weight_norm import weight_norm

#: The scale ``c`` used by "ssn" and "bssn" when none is given. Lin et al. tune ``c`` per
#: dataset (sweeping 0.7-4.0 on CIFAR-10, 0.7-1.6 on STL-10/CelebA, 1.0-1.6 on ImageNet);
#: 1.2 lies inside every one of those grids and slightly above SN's implicit 1.0, the
#: direction their Kaiming argument points. It is a starting point: sweep it with
#: ``normlab compare --scale ...`` for your data.
DEFAULT_SCALE = 1.2


@dataclass(frozen=True)
class Method:
    """One weight reparameterization as the library and the lab know it."""

    name: str
    #: "none", "eqlr", "wn" or "sn" (the spectral-norm family).
    family: str
    #: The function that puts it on one layer (None for "none").
    builder: Callable[..., nn.Module] | None
    #: Arguments the method fixes (a user may repeat them, not change them).
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Arguments it fills in when not given.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Whether the lab applies it to the discriminator only (G stays plain).
    d_only: bool = False
    #: Whether it takes ``scale``.
    takes_scale: bool = False
    #: Where it comes from.
    paper: str = ""


_SN_PAPER = "Miyato et al., ICLR 2018"
_LIN = "Lin et al., NeurIPS 2021"
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", "none", None),
        Method("eqlr", "eqlr", equalized_lr, paper="Karras et al., ICLR 2018"),
        Method("wn", "wn", weight_norm, defaults={"dim": None}, paper="Salimans & Kingma 2016"),
        Method(
            "sn", "sn", spectral_norm, {"scale": 1.0, "bidirectional": False}, d_only=True,
            paper=_SN_PAPER,
        ),
        Method(
            "ssn", "sn", spectral_norm, {"bidirectional": False}, {"scale": DEFAULT_SCALE},
            d_only=True, takes_scale=True, paper=_LIN,
        ),
        Method(
            "bsn", "sn", spectral_norm, {"scale": 1.0, "bidirectional": True}, d_only=True,
            paper=_LIN,
        ),
        Method(
            "bssn", "sn", spectral_norm, {"bidirectional": True}, {"scale": DEFAULT_SCALE},
            d_only=True, takes_scale=True, paper=_LIN,
        ),
        Method(
            "sn_exact", "sn", spectral_norm, {"exact": True, "bidirectional": False},
            d_only=True, paper="Farnia et al. 2019; Gouk et al. 2021",
        ),
    )
}  # fmt: skip

#: Every method name ``apply`` accepts.
METHODS: tuple[str, ...] = tuple(REGISTRY)
#: Methods the lab puts on the discriminator only.
D_ONLY_METHODS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.d_only)
#: Methods that take a ``scale``.
SCALED_METHODS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.takes_scale)


def get(method: str) -> Method:
    """The registry entry of ``method``, or a clear error listing the known ones."""
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return REGISTRY[method]
