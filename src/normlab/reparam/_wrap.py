"""How a layer gets its effective weight: the one mechanism every method shares.

A reparameterized layer keeps its class's behaviour but becomes an instance of a subclass
(``ReparametrizedConv2d`` for an ``nn.Conv2d``, made once per class) whose weight (and,
for methods that re-express it, bias) is a *property* computed by the child module
``layer.reparam`` from the raw tensors it holds::

    layer.weight  ==  layer.reparam.effective_weight(layer)  ==  reparam(layer)

``reparam(layer)`` (its ``forward``) is the method's formula, written with plain PyTorch
ops, so autograd gives exact derivatives of every order. It runs at every read of the
weight, from the current raw tensors: what ``torch.nn.utils.parametrize`` does. Within one
call of the layer the weight is computed once, however often the layer's ``forward`` reads
it (``nn.MultiheadAttention`` reads its packed projection three times); ``nl.cached()``
extends that sharing to a whole block of code (see ``normlab.reparam.cache``). Where the
weight is a coefficient times the raw one, the layer may scale its output instead (the same
values; ``normlab.reparam._output_scaling``).

Compared with ``parametrize``, the subclass costs one property call a forward, and it
survives ``torch.save(model)``, ``copy.deepcopy`` and ``state_dict`` round trips: it
pickles as "the original class plus its state".
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from normlab.reparam._layers import check_supported, param_names
from normlab.reparam._output_scaling import autocast_enabled, output_scaled_forward
from normlab.reparam.cache import active_cache

#: Name of the child module that holds a layer's reparameterization.
REPARAM_ATTR = "reparam"
#: Where a layer keeps the weight computed for the call under way.
_CALL_WEIGHT = "_normlab_call_weight"
_MISSING = object()
_WRAPPED_CLASSES: dict[tuple[type[nn.Module], str, str], type[nn.Module]] = {}
#: ``torch.compiler.disable`` that imports ``torch._dynamo`` at the first call rather than at
#: ``import normlab`` (2-3 s of every process's start on this CPU); PyTorch's own lazy form
#: where this version has it.
_run_eagerly: Callable[[Callable], Callable] = getattr(
    torch, "_disable_dynamo", torch.compiler.disable
)


class Reparametrization(nn.Module):
    """Base class: computes a layer's effective weight from the raw tensors it owns.

    Subclasses implement ``forward(layer) -> Tensor`` (the formula; SN-family methods take
    their power step there when ``takes_step()``) and, where ``owns_bias``,
    ``effective_bias()``. ``layer`` is passed at call time (never stored), so no reference
    cycle exists. The arithmetic runs in float32 under autocast (a power iteration in
    bfloat16 would give sigma to two digits); the layer casts the result as usual.
    """

    #: The method's name as asked (``apply(m, "ssn", scale=1.0)`` is ``"ssn"``).
    method: str = ""
    #: Whether this reparameterization also re-expresses the layer's bias.
    owns_bias: bool = False
    #: Whether ``observe_input`` must see each forward's input (exact SN).
    needs_input: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._weight_grad_hooks: OrderedDict[int, Callable[[Tensor], Any]] = OrderedDict()

    def forward(self, layer: nn.Module) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        return None

    def coefficient(self, layer: nn.Module) -> Tensor | float | None:
        """The scalar ``c`` with ``self(layer) == c * raw_weight``, for ``_output_scaling``;
        None (taking no step) where the weight is not of that form."""
        return None

    def observe_input(self, layer: nn.Module, x: Tensor) -> None:
        """Hook for methods that depend on the input's shape (exact SN)."""

    def takes_step(self) -> bool:
        """Whether this computation takes an estimation step: in training mode, except for
        a second computation of the same layer inside one ``nl.cached()`` block."""
        if not self.training:
            return False
        cache = active_cache()
        return cache is None or cache.first_step(self)

    def add_weight_grad_hook(self, fn: Callable[[Tensor], Any]) -> RemovableHandle:
        """Call ``fn(grad)`` with the gradient w.r.t. the *effective* weight, once per
        backward through each computed weight; ``handle.remove()`` detaches it."""
        handle = RemovableHandle(self._weight_grad_hooks)
        self._weight_grad_hooks[handle.id] = fn
        return handle

    def effective_weight(self, layer: nn.Module) -> Tensor:
        """``self(layer)`` in float32, shared within the call and any ``nl.cached()`` block.

        Under ``torch.compile`` it runs eagerly (a graph break per layer; the layer's own op
        stays compiled): compiled and eager models then take the same power steps.
        """
        compiling = torch.compiler.is_compiling()
        return (self._compute_eagerly if compiling else self._compute)(layer, "weight")

    def effective_coefficient(self, layer: nn.Module) -> Tensor | float | None:
        """``self.coefficient(layer)`` in float32, shared like the effective weight."""
        return self._compute(layer, "coefficient")

    @_run_eagerly
    def _compute_eagerly(self, layer: nn.Module, kind: str) -> Tensor:
        return self._compute(layer, kind)

    def _compute(self, layer: nn.Module, kind: str) -> Any:
        cache = active_cache()
        value = None if cache is None else cache.get(self, kind)
        if value is not None:
            return value
        with _float32(self):
            value = self(layer) if kind == "weight" else self.coefficient(layer)
        if kind == "weight" and value.requires_grad:
            for fn in self._weight_grad_hooks.values():
                value.register_hook(fn)
        if cache is not None and value is not None:
            cache.put(self, kind, value)
        return value

    def __getstate__(self) -> dict:
        # The instruments' hooks are not part of the state.
        return {**self.__dict__, "_weight_grad_hooks": OrderedDict()}


def _float32(module: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast off for ``module``'s device while it is on."""
    device_type = next((t.device.type for t in module._parameters.values() if t is not None), "cpu")
    if autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


# -- the wrapped subclass ----------------------------------------------------------------
def _get_weight(self: nn.Module) -> Tensor:
    weight = self.__dict__.get(_CALL_WEIGHT)
    return weight if weight is not None else self._modules[REPARAM_ATTR].effective_weight(self)


def _get_bias(self: nn.Module) -> Tensor | None:
    reparam = self._modules[REPARAM_ATTR]
    if reparam.owns_bias:
        return reparam.effective_bias()
    name = self._normlab_bias_name
    if name in self._parameters:
        return self._parameters[name]
    raise AttributeError(name)


def _set_weight(self: nn.Module, value: Any) -> None:
    raise AttributeError(
        f"the weight of this {type(self).__name__} is computed by its "
        f"'{self._modules[REPARAM_ATTR].method}' reparameterization; set the raw "
        f"tensors in .{REPARAM_ATTR} instead, or call normlab.remove() first"
    )


def _forward(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    """The layer's own forward, with its weight computed once for the call."""
    reparam = self._modules[REPARAM_ATTR]
    if reparam.needs_input:
        _observe(reparam, self, args[0] if args else next(iter(kwargs.values())))
    if self.__dict__.get(_CALL_WEIGHT) is not None:  # re-entered (a layer calling itself)
        return self._normlab_base.forward(self, *args, **kwargs)
    out = output_scaled_forward(self, reparam, args, kwargs)  # None: not applicable
    if out is not None:
        return out
    self.__dict__[_CALL_WEIGHT] = reparam.effective_weight(self)
    try:
        return self._normlab_base.forward(self, *args, **kwargs)
    finally:
        self.__dict__.pop(_CALL_WEIGHT, None)


@_run_eagerly
def _observe(reparam: Reparametrization, layer: nn.Module, x: Tensor) -> None:
    with _float32(reparam):
        reparam.observe_input(layer, x)


def _reduce_ex(self: nn.Module, protocol: int) -> tuple:
    state = {k: v for k, v in self.__dict__.items() if k != _CALL_WEIGHT}
    return (_new_reparametrized, (self._normlab_base, *param_names(self)), state)


def _new_reparametrized(base: type[nn.Module], weight: str = "weight", bias: str = "bias"):
    """Unpickling helper: an empty instance of the wrapped subclass of ``base``."""
    obj = base.__new__(base)
    obj.__class__ = wrapped_class(base, weight, bias)
    return obj


def wrapped_class(
    base: type[nn.Module], weight: str = "weight", bias: str = "bias"
) -> type[nn.Module]:
    """The reparameterized subclass of ``base`` whose ``weight`` / ``bias`` attributes
    (named so by the layer kind) are computed (made once, then cached)."""
    key = (base, weight, bias)
    if key not in _WRAPPED_CLASSES:
        namespace = {
            "_normlab_base": base,
            "_normlab_bias_name": bias,
            weight: property(_get_weight, _set_weight, doc="Effective weight."),
            bias: property(_get_bias, doc="Effective bias (None where the layer has none)."),
            "forward": _forward,
            "__reduce_ex__": _reduce_ex,
            "__module__": base.__module__,
        }
        _WRAPPED_CLASSES[key] = type(f"Reparametrized{base.__name__}", (base,), namespace)
    return _WRAPPED_CLASSES[key]


def is_reparametrized(module: nn.Module) -> bool:
    """Whether ``module`` carries a normlab reparameterization."""
    return REPARAM_ATTR in module._modules and hasattr(type(module), "_normlab_base")


def reparametrization_of(module: nn.Module) -> Reparametrization | None:
    """The ``Reparametrization`` of ``module``, or None."""
    return module._modules[REPARAM_ATTR] if is_reparametrized(module) else None


def check_can_register(module: nn.Module, name: str = "") -> nn.Parameter:
    """The layer's own weight parameter; a clear error if ``module`` cannot take a (new)
    reparameterization."""
    where = f"layer '{name}'" if name else f"this {type(module).__name__}"
    check_supported(module, name)
    if is_reparametrized(module):
        method = module._modules[REPARAM_ATTR].method
        raise ValueError(
            f"{where} already has the '{method}' reparameterization; one layer takes one "
            f"method: call normlab.remove() on it first"
        )
    if torch.nn.utils.parametrize.is_parametrized(module):
        raise ValueError(
            f"{where} carries a torch.nn.utils.parametrize parametrization; remove it "
            f"(torch.nn.utils.parametrize.remove_parametrizations) before using normlab"
        )
    if "weight_orig" in module._parameters or "weight_g" in module._parameters:
        raise ValueError(
            f"{where} carries PyTorch's hook-based spectral_norm/weight_norm; remove it "
            f"(torch.nn.utils.remove_spectral_norm / remove_weight_norm) before using normlab"
        )
    weight_name, _ = param_names(module)
    weight = module._parameters.get(weight_name)
    if weight is None:
        raise ValueError(f"{where} has no {weight_name} parameter to reparameterize")
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(
            f"{where} has {bad} non-finite (NaN/Inf) weight entries; refusing to register"
        )
    return weight


def register(module: nn.Module, reparam: Reparametrization) -> nn.Module:
    """Attach ``reparam`` (already holding the raw tensors) to ``module``; the layer's own
    weight (and bias, where ``reparam.owns_bias``) parameters move there."""
    weight_name, bias_name = param_names(module)
    del module._parameters[weight_name]
    if reparam.owns_bias and bias_name in module._parameters:
        del module._parameters[bias_name]
    module.add_module(REPARAM_ATTR, reparam)
    module.__class__ = wrapped_class(type(module), weight_name, bias_name)
    return module


@torch.no_grad()
def unregister(module: nn.Module) -> nn.Module:
    """Bake the current effective weight (and bias) into plain parameters, read in eval
    mode (no power step), so the layer's eval output is unchanged."""
    reparam: Reparametrization = module._modules[REPARAM_ATTR]
    weight_name, bias_name = param_names(module)
    was_training = reparam.training
    reparam.eval()
    try:
        weight = reparam.effective_weight(module).detach().clone()
        bias = reparam.effective_bias() if reparam.owns_bias else None
        bias = None if bias is None else bias.detach().clone()
    finally:
        reparam.train(was_training)
    requires_grad = any(p.requires_grad for p in reparam.parameters())
    if reparam.owns_bias:
        new_bias = None if bias is None else nn.Parameter(bias, requires_grad=requires_grad)
    else:
        new_bias = module._parameters.pop(bias_name, _MISSING)
    module.__class__ = module._normlab_base
    del module._modules[REPARAM_ATTR]
    # PyTorch's order: weight, then bias (after the layer's other parameters, if any).
    module._parameters[weight_name] = nn.Parameter(weight, requires_grad=requires_grad)
    if new_bias is not _MISSING:
        module._parameters[bias_name] = new_bias
    return module
