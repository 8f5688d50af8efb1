"""One call for a whole model: ``apply(model, method)`` and ``remove(model)``."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from normlab.reparam._layers import is_supported
from normlab.reparam._wrap import check_can_register, is_reparametrized, unregister
from normlab.reparam.equalized import equalized_lr
from normlab.reparam.spectral import spectral_norm
from normlab.reparam.weight_norm import weight_norm

#: The scale ``c`` used by "ssn" and "bssn" when none is given. Lin et al. tune ``c`` per
#: dataset (sweeping 0.7-4.0 on CIFAR-10, 0.7-1.6 on STL-10/CelebA, 1.0-1.6 on ImageNet);
#: 1.2 lies inside every one of those grids and slightly above SN's implicit 1.0, the
#: direction their Kaiming argument points. It is a starting point: sweep it with
#: ``normlab compare --scale ...`` for your data.
DEFAULT_SCALE = 1.2

#: Method name -> (function, fixed keyword arguments).
_METHODS: dict[str, tuple[Callable[..., nn.Module] | None, dict[str, Any]]] = {
    "none": (None, {}),
    "eqlr": (equalized_lr, {}),
    "wn": (weight_norm, {}),
    "sn": (spectral_norm, {"scale": 1.0, "bidirectional": False}),
    "ssn": (spectral_norm, {"bidirectional": False}),
    "bsn": (spectral_norm, {"scale": 1.0, "bidirectional": True}),
    "bssn": (spectral_norm, {"bidirectional": True}),
    "sn_exact": (spectral_norm, {"exact": True, "bidirectional": False}),
}

#: Every method name ``apply`` accepts.
METHODS: tuple[str, ...] = tuple(_METHODS)


def _matches(name: str, patterns: Sequence[str] | str | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _method_kwargs(method: str, kwargs: dict[str, Any]) -> tuple[Callable[..., nn.Module], dict]:
    fn, fixed = _METHODS[method]
    assert fn is not None
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("module", "name")]
    for key, value in kwargs.items():
        if key in fixed and fixed[key] != value:
            hint = " (use 'ssn' or 'bssn' for a scale other than 1)" if key == "scale" else ""
            raise ValueError(
                f"method '{method}' fixes {key}={fixed[key]!r}; got {key}={value!r}{hint}"
            )
        if key not in allowed:
            raise TypeError(
                f"method '{method}' takes no argument {key!r}; it accepts: "
                + ", ".join(k for k in allowed if k not in fixed)
            )
    merged = {**fixed, **kwargs}
    if method in ("ssn", "bssn"):
        merged.setdefault("scale", DEFAULT_SCALE)
    if method == "wn":
        merged.setdefault("dim", None)  # each layer's own output dim
    return fn, merged


def apply(
    model: nn.Module,
    method: str,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Apply ``method`` to every supported layer of ``model``; returns ``model``.

    Supported layers are Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and Embedding (and
    subclasses). ``include`` / ``exclude`` are glob patterns (``fnmatch``) on qualified
    layer names (``"blocks.3.conv1"``; ``""`` is ``model`` itself): with ``include`` only
    matching layers are taken, and ``exclude`` drops matches. Every target is checked
    before any is changed, so on error the model is left as it was.

    Args:
        model: any ``nn.Module`` (a single layer works too).
        method: one of ``METHODS``: "none", "eqlr", "wn", "sn", "ssn", "bsn", "bssn", "sn_exact".
        kwargs: passed to the method's function (``equalized_lr``, ``weight_norm`` or
            ``spectral_norm``), e.g. ``scale=1.2`` for "ssn"/"bssn" (default ``DEFAULT_SCALE``).

    Example::

        >>> D = nl.apply(D, "bssn", scale=1.2)
        >>> G = nl.apply(G, "eqlr", exclude="to_rgb")
    """
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method == "none":
        if kwargs:
            raise TypeError(f"method 'none' takes no arguments, got {sorted(kwargs)}")
        return model
    fn, merged = _method_kwargs(method, kwargs)

    candidates = [
        (name, m) for name, m in model.named_modules() if is_supported(m) or is_reparametrized(m)
    ]
    targets = [
        (name, m)
        for name, m in candidates
        if (include is None or _matches(name, include)) and not _matches(name, exclude)
    ]
    if not targets:
        names = ", ".join(repr(n) for n, _ in candidates[:12]) or "none"
        raise ValueError(
            f"no layer of {type(model).__name__} to apply '{method}' to "
            f"(include={include!r}, exclude={exclude!r}); supported layers found: {names}"
        )
    for name, layer in targets:  # validate everything before changing anything
        check_can_register(layer, name)
    snapshots = [_snapshot(layer) for _, layer in targets]
    try:
        for name, layer in targets:
            fn(layer, **merged, name=name)
    except BaseException:
        for (_, layer), snap in zip(targets, snapshots):
            _restore(layer, snap)
        raise
    return model


def _snapshot(layer: nn.Module) -> tuple:
    values = {k: p.detach().clone() for k, p in layer._parameters.items() if p is not None}
    return (
        layer.__class__,
        dict(layer._parameters),
        dict(layer._modules),
        dict(layer._buffers),
        values,
    )


@torch.no_grad()
def _restore(layer: nn.Module, snap: tuple) -> None:
    """Undo a partial ``apply`` on ``layer`` (class, parameters and their values)."""
    cls, params, modules, buffers, values = snap
    layer.__class__ = cls
    for store, saved in (
        (layer._parameters, params),
        (layer._modules, modules),
        (layer._buffers, buffers),
    ):
        store.clear()
        store.update(saved)
    for k, v in values.items():
        params[k].copy_(v)


def remove(model: nn.Module) -> nn.Module:
    """Replace every reparameterization in ``model`` with a plain parameter; returns ``model``.

    Each layer's ``weight`` (and bias) becomes an ``nn.Parameter`` holding the current
    effective value, so the model's outputs (in eval mode) do not change and it no longer
    depends on normlab. A model with no reparameterized layer is returned as it is.
    """
    for _, layer in list(model.named_modules()):
        if is_reparametrized(layer):
            unregister(layer)
    return model


def methods_of(model: nn.Module) -> dict[str, str]:
    """``{qualified layer name: method}`` for every reparameterized layer of ``model``."""
    return {
        name: layer.reparam.method
        for name, layer in model.named_modules()
        if is_reparametrized(layer)
    }
