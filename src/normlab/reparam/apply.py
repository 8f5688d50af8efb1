"""One call for a whole model: ``apply(model, method)`` and ``remove(model)``."""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normlab.reparam import registry
from normlab.reparam._layers import is_supported
from normlab.reparam._wrap import (
    Reparametrization,
    check_can_register,
    is_reparametrized,
    unregister,
)
from normlab.reparam.registry import Method


def _matches(name: str, patterns: Sequence[str] | str | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _method_kwargs(method: Method, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The builder's keyword arguments: ``kwargs`` checked against the method's own."""
    fixed = method.fixed
    allowed = [p for p in inspect.signature(method.builder).parameters if p not in _INTERNAL]
    for key, value in kwargs.items():
        if key in fixed and fixed[key] != value:
            hint = " (use 'ssn' or 'bssn' for a scale other than 1)" if key == "scale" else ""
            raise ValueError(
                f"method '{method.name}' fixes {key}={fixed[key]!r}; got {key}={value!r}{hint}"
            )
        if key not in allowed:
            raise TypeError(
                f"method '{method.name}' takes no argument {key!r}; it accepts: "
                + ", ".join(k for k in allowed if k not in fixed)
            )
    return {**method.defaults, **fixed, **kwargs, "method": method.name}


#: Builder arguments that ``apply`` fills in itself.
_INTERNAL = ("module", "name", "method")


def unreparametrized_weights(model: nn.Module) -> list[str]:
    """Qualified names of the weight-like parameters (2 or more dims) of ``model`` that no
    normlab method can take: those of unsupported modules (a custom layer's own
    ``nn.Parameter``, attention with separate q/k/v projections)."""
    names = []
    for mod_name, module in model.named_modules():
        if is_supported(module) or isinstance(module, Reparametrization):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def apply(
    model: nn.Module,
    method: str,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    strict: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Apply ``method`` to every supported layer of ``model``; returns ``model``.

    Supported layers are Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and Embedding (and
    subclasses), and MultiheadAttention's packed Q/K/V projection ``in_proj_weight`` (each
    of the three blocks normalized as its own matrix; ``out_proj`` is a Linear).
    ``include`` / ``exclude`` are glob patterns (``fnmatch``) on qualified layer names
    (``"blocks.3.conv1"``; ``""`` is ``model`` itself): with ``include`` only matching
    layers are taken, and ``exclude`` drops matches. Every target is checked
    before any is changed, so on error the model is left as it was.

    Args:
        model: any ``nn.Module`` (a single layer works too).
        method: one of ``METHODS``: "none", "eqlr", "wn", "sn", "ssn", "bsn", "bssn", "sn_exact".
        strict: raise instead of warning when ``model`` has weights that no method can
            take (see ``unreparametrized_weights``), which stay as they are.
        kwargs: passed to the method's function (``equalized_lr``, ``weight_norm`` or
            ``spectral_norm``), e.g. ``scale=1.2`` for "ssn"/"bssn" (default ``DEFAULT_SCALE``).

    Example::

        >>> D = nl.apply(D, "bssn", scale=1.2)
        >>> G = nl.apply(G, "eqlr", exclude="to_rgb")
    """
    entry = registry.get(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if entry.builder is None:
        if kwargs:
            raise TypeError(f"method 'none' takes no arguments, got {sorted(kwargs)}")
        return model
    merged = _method_kwargs(entry, kwargs)

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
    skipped = unreparametrized_weights(model)
    if skipped:
        message = (
            f"'{method}' leaves {len(skipped)} weight(s) of {type(model).__name__} as they are "
            f"(no normlab method supports their modules): {', '.join(skipped)}"
        )
        if strict:
            raise ValueError(message + "; strict=True refuses this")
        warnings.warn(message + " (strict=True makes this an error)", stacklevel=2)
    snapshots = [snapshot(layer) for _, layer in targets]
    try:
        for name, layer in targets:
            entry.builder(layer, **merged, name=name)
    except BaseException:
        for (_, layer), snap in zip(targets, snapshots):
            restore(layer, snap)
        raise
    return model


def snapshot(layer: nn.Module) -> tuple:
    """What ``restore`` needs to undo a registration on ``layer``."""
    values = {k: p.detach().clone() for k, p in layer._parameters.items() if p is not None}
    return (
        layer.__class__,
        dict(layer._parameters),
        dict(layer._modules),
        dict(layer._buffers),
        values,
    )


@torch.no_grad()
def restore(layer: nn.Module, snap: tuple) -> None:
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
    """``{qualified layer name: method}`` for every reparameterized layer of ``model``, each
    the name it was asked by (``apply(m, "ssn", scale=1.0)`` reports ``"ssn"``)."""
    return {
        name: layer.reparam.method
        for name, layer in model.named_modules()
        if is_reparametrized(layer)
    }
