"""Bring models trained with PyTorch's own ``spectral_norm`` over to normlab.

PyTorch has two spectral norms, and their state dicts name a layer's tensors differently:

* the hook-based ``torch.nn.utils.spectral_norm`` (the one most SNGAN code uses)::

      <layer>.weight_orig   <layer>.weight_u   <layer>.weight_v   [<layer>.bias]

* the parametrization ``torch.nn.utils.parametrizations.spectral_norm``::

      <layer>.parametrizations.weight.original
      <layer>.parametrizations.weight.0._u   <layer>.parametrizations.weight.0._v   [<layer>.bias]

Both compute ``W / sigma`` with ``sigma = u . (W_mat v)``, ``W_mat`` the weight reshaped to
``(out, -1)`` (dimension 1 first for transposed convs): the same formula and the same
reshape as normlab's ``"sn"``, whose buffers are ``<layer>.reparam.u0`` / ``.v0`` and raw
weight ``<layer>.reparam.raw_weight``. ``load_torch_spectral_norm_state`` renames the keys
and loads them, so the converted model's eval outputs equal the PyTorch model's (up to
float rounding: normlab multiplies by ``1/sigma`` where PyTorch divides by ``sigma``).
Training then continues with normlab's power iteration (one step per training forward,
like PyTorch's).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from normlab.reparam._layers import is_supported
from normlab.reparam._wrap import REPARAM_ATTR, check_can_register, is_reparametrized
from normlab.reparam.apply import restore, snapshot

#: Per-layer key suffixes of each PyTorch form: (raw weight, u, v).
_OLD_KEYS = ("weight_orig", "weight_u", "weight_v")
_NEW_KEYS = (
    "parametrizations.weight.original",
    "parametrizations.weight.0._u",
    "parametrizations.weight.0._v",
)
#: The keys normlab's "sn" uses for the same three tensors (below ``<layer>.reparam.``).
_NL_KEYS = ("raw_weight", "u0", "v0")


def _split(key: str) -> tuple[str, str, int] | None:
    """``(layer prefix, form, index in the triple)`` if ``key`` is a torch SN key, else None."""
    for form, suffixes in (("hook", _OLD_KEYS), ("parametrize", _NEW_KEYS)):
        for i, suffix in enumerate(suffixes):
            if key == suffix or key.endswith("." + suffix):
                return key[: len(key) - len(suffix)], form, i
    return None


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_torch_spectral_norm_state(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True
) -> nn.Module:
    """Load a state dict saved from a model using PyTorch's ``spectral_norm``; returns ``model``.

    ``model`` is the same architecture built with plain layers, or with normlab's ``"sn"``
    already on the layers concerned. Every layer whose entries in ``state_dict`` come from
    PyTorch's spectral norm, in either form (the hook-based ``weight_orig`` / ``weight_u`` /
    ``weight_v`` keys of ``torch.nn.utils.spectral_norm``, or the
    ``parametrizations.weight.original`` / ``parametrizations.weight.0._u`` / ``._v`` keys of
    ``torch.nn.utils.parametrizations.spectral_norm``), gets ``normlab.spectral_norm`` (method
    ``"sn"``) if it has no reparameterization yet, and receives the raw weight and the two
    power vectors as they were. The model's outputs in eval mode then equal the PyTorch
    model's (to float rounding); the other entries (biases, plain layers, BatchNorm
    statistics, ...) load as with ``model.load_state_dict``.

    The mapping assumes PyTorch's default ``dim`` (1 for ``ConvTranspose*d``, 0 otherwise),
    which normlab's output dimension matches; a vector of another length is reported. State
    dicts from PyTorch < 1.1 (no ``weight_v``) are not supported.

    Args:
        model: the model to load into (changed in place).
        state_dict: the PyTorch state dict (e.g. ``torch.load(path, weights_only=True)``).
        strict: as for ``load_state_dict``: every key of the model must be in the state dict
            and every key of the state dict must belong to the model.

    Raises:
        ValueError: the state dict holds no PyTorch spectral-norm entry; a layer's triple is
            incomplete or mixes the two forms; its keys name no supported layer of ``model``;
            a layer carries another normlab method (or a ``torch.nn.utils.parametrize``
            parametrization, or PyTorch's hook-based spectral norm); the shapes do not match;
            or (``strict``) keys are missing or unexpected. The model is left unchanged.

    Example::

        >>> D = nl.load_torch_spectral_norm_state(Discriminator(), torch.load("sngan_D.pt"))
        >>> D.eval()(x)  # same outputs as the PyTorch SNGAN's discriminator
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}"
        )

    # 1. Group the PyTorch spectral-norm entries by layer.
    found: dict[str, dict[int, tuple[str, str]]] = {}  # prefix -> {index: (key, form)}
    for key in state_dict:
        hit = _split(key)
        if hit is not None:
            prefix, form, i = hit
            found.setdefault(prefix, {})[i] = (key, form)
    if not found:
        raise ValueError(
            "the state dict holds no entry of PyTorch's spectral_norm (keys ending in "
            f"{_OLD_KEYS} or {_NEW_KEYS}); load it with model.load_state_dict instead"
        )

    modules = dict(model.named_modules())
    layers: list[tuple[str, nn.Module, str, tuple[str, str, str]]] = []
    for prefix in sorted(found):
        name = prefix[:-1] if prefix else ""
        where = f"layer '{name}'" if name else f"the model itself ({type(model).__name__})"
        forms = {form for _, form in found[prefix].values()}
        if len(forms) > 1:
            raise ValueError(f"the state dict mixes both PyTorch spectral_norm forms for {where}")
        (form,) = forms
        suffixes = _OLD_KEYS if form == "hook" else _NEW_KEYS
        missing = [prefix + s for i, s in enumerate(suffixes) if i not in found[prefix]]
        if missing:
            hint = " (a state dict from PyTorch < 1.1?)" if missing == [prefix + "weight_v"] else ""
            raise ValueError(
                f"incomplete PyTorch spectral_norm entries for {where}: missing {missing}{hint}"
            )
        layer = modules.get(name)
        if layer is None or not (is_supported(layer) or is_reparametrized(layer)):
            what = (
                "no such module"
                if layer is None
                else f"a {type(layer).__name__}, not a weighted layer"
            )
            raise ValueError(
                f"the state dict's keys {_describe([prefix + s for s in suffixes])} do not match "
                f"the model: {type(model).__name__} has {what} at '{name}' "
                "(is it the same architecture?)"
            )
        if is_reparametrized(layer):
            method = layer._modules[REPARAM_ATTR].method
            if method != "sn":
                raise ValueError(
                    f"{where} carries normlab's '{method}'; PyTorch's spectral_norm is normlab's "
                    f"'sn': call normlab.remove() on it (or build the model without it) first"
                )
        else:
            check_can_register(layer, name)
        layers.append((name, layer, prefix, tuple(prefix + s for s in suffixes)))

    # 2. Check shapes against the layers before changing anything.
    for name, layer, _, (k_w, k_u, k_v) in layers:
        weight = (
            layer._modules[REPARAM_ATTR].raw_weight if is_reparametrized(layer) else layer.weight
        )
        w, u, v = state_dict[k_w], state_dict[k_u], state_dict[k_v]
        out_dim = (
            1
            if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d)
            else 0
        )
        rows = weight.shape[out_dim]
        expected = (tuple(weight.shape), (rows,), (weight.numel() // max(rows, 1),))
        got = (tuple(w.shape), tuple(u.shape), tuple(v.shape))
        if got != expected:
            raise ValueError(
                f"layer '{name}': PyTorch spectral_norm tensors of shapes weight {got[0]}, "
                f"u {got[1]}, v {got[2]} do not fit its weight {expected[0]} (expected "
                f"u {expected[1]}, v {expected[2]}; PyTorch's spectral_norm must have used its "
                f"default dim={out_dim})"
            )

    # 3. Rename the keys, then load everything at once (into a copy first, so that errors
    #    leave the model unchanged).
    converted: dict[str, Tensor] = {}
    renamed = {}
    for _, _, prefix, keys in layers:
        for key, nl_key in zip(keys, _NL_KEYS):
            renamed[key] = f"{prefix}{REPARAM_ATTR}.{nl_key}"
        # Some exports also carry the derived ``weight`` next to ``weight_orig``: drop it.
        renamed.setdefault(prefix + "weight", None)
    for key, value in state_dict.items():
        new = renamed.get(key, key)
        if new is not None:
            converted[new] = value
    metadata = getattr(state_dict, "_metadata", None)

    targets = [(n, m) for n, m, _, _ in layers if not is_reparametrized(m)]
    snapshots = [snapshot(layer) for _, layer in targets]
    try:
        from normlab.reparam.spectral import spectral_norm

        for name, layer in targets:
            spectral_norm(layer, name=name)
        model_state = model.state_dict()
        missing = sorted(model_state.keys() - converted.keys())
        unexpected = sorted(converted.keys() - model_state.keys())
        bad_shapes = [
            f"'{k}': {tuple(v.shape)} in the state dict, {tuple(model_state[k].shape)} in the model"
            for k, v in converted.items()
            if k in model_state
            and isinstance(v, Tensor)
            and v.shape != model_state[k].shape
            and not k.endswith(f"{REPARAM_ATTR}.v")  # exact SN's vector takes the saved shape
        ]
        if bad_shapes:
            raise ValueError(
                f"the PyTorch state dict does not fit {type(model).__name__}: "
                + "; ".join(bad_shapes[:8])
                + (" ..." if len(bad_shapes) > 8 else "")
                + " (is it the same architecture?)"
            )
        if strict and (missing or unexpected):
            inverse = {v: k for k, v in renamed.items() if v is not None}
            unexpected = [inverse.get(k, k) for k in unexpected]
            parts = []
            if missing:
                parts.append(f"missing from the state dict: {_describe(missing)}")
            if unexpected:
                parts.append(f"not in the model: {_describe(unexpected)}")
            raise ValueError(
                f"the PyTorch state dict's keys do not match {type(model).__name__} (after mapping "
                f"the spectral_norm entries of {len(layers)} layer(s) to normlab's 'sn'): "
                + "; ".join(parts)
                + ". Is it the same architecture? (strict=False loads the matching keys only)"
            )
        if metadata is not None:
            converted = _with_metadata(converted, metadata)
        model.load_state_dict(converted, strict=strict)
    except BaseException:
        for (_, layer), snap in zip(targets, snapshots):
            restore(layer, snap)
        raise
    return model


def _with_metadata(converted: dict[str, Tensor], metadata: object) -> dict[str, Tensor]:
    from collections import OrderedDict

    out: OrderedDict[str, Tensor] = OrderedDict(converted)
    out._metadata = metadata  # type: ignore[attr-defined]
    return out
