"""The mechanism that puts a reparameterization on a layer.

A reparameterized layer keeps its class's behaviour but becomes an instance of a
subclass (``ReparametrizedConv2d`` for an ``nn.Conv2d``, made once per class)
whose ``weight`` (and, for methods that re-express it, ``bias``) is a property
computed by the child module ``layer.reparam`` from the trainable raw tensors it
holds. Compared with ``torch.nn.utils.parametrize`` this keeps the cost of a
forward to one Python property call, and it survives ``torch.save(model)``,
``copy.deepcopy`` and ``state_dict`` round trips: the subclass pickles as "the
original class plus its state", so nothing needs to be importable but the
user's own layer class.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from normlab.reparam._layers import STOCK_FORWARDS, check_supported, output_numel, scaled_map

#: Name of the child module that holds a layer's reparameterization.
REPARAM_ATTR = "reparam"

_MISSING = object()
_CACHE_ENABLED = True
#: When a layer scales its output instead of its weight: "auto" (when the output is
#: smaller), "always" or "never"; see ``set_output_scaling``.
_OUTPUT_SCALING = "auto"
OUTPUT_SCALING_MODES = ("auto", "always", "never")
_WRAPPED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


class Reparametrization(nn.Module):
    """Base class: computes a layer's effective weight from raw tensors it owns.

    Subclasses implement ``forward(layer) -> Tensor`` (the effective weight) and,
    if ``owns_bias`` is true, ``effective_bias()``. ``layer`` is passed at call
    time (never stored) so that no reference cycle exists between the two.

    ``effective_weight`` wraps ``forward`` with what every method shares:

    * the arithmetic runs in float32 even under autocast (a power iteration in
      bfloat16 would give sigma to two digits); the layer casts the result as usual;
    * forwards that share one backward share one computed weight: the result is
      *cached* until the raw tensors change (their version counter: an optimizer step,
      ``load_state_dict``), a backward pass has gone through it, or grad mode / train
      mode changes. A discriminator called on the real and the fake batch before one
      backward therefore takes one power-iteration step, from the D(real) pass, as the
      BSN reference code does, and the backward through the normalization runs once.
      Calling backward after each forward (``loss_real.backward();
      loss_fake.backward()``) works as usual: the first backward invalidates the cache.
      Training-mode forwards without grad are never cached, so
      ``with torch.no_grad(): model(x)`` repeated keeps refining the estimate, one
      step per forward. ``normlab.reparam.set_weight_cache(False)`` turns caching
      off globally. Under ``torch.compile`` this method runs eagerly (a graph break per
      layer), so compiled and eager models take the same power-iteration steps.
    """

    #: Short method name as in ``normlab.METHODS`` (set by each subclass).
    method: str = ""
    #: Whether this reparameterization also re-expresses the layer's bias.
    owns_bias: bool = False
    #: Whether ``observe_input`` must be called with each forward's input.
    needs_input: bool = False
    #: Whether ``factors`` is implemented (``W_eff = coef * tied``, see there).
    factorable: bool = False
    #: In the "auto" output-scaling mode the output is scaled where this many times its size
    #: is below the weight's: the cost of the output's passes relative to the weight's.
    output_cost: float = 1.0
    #: Whether each computed weight needs a Python hook that drops the cache when a backward
    #: goes through it (its graph's saved tensors are then freed). False where the weight's
    #: own backward calls ``_invalidate`` (the SN family).
    needs_invalidate_hook: bool = True
    #: Attributes that hold per-step values kept for later (see ``keep``), dropped on pickling.
    transient_attrs: tuple[str, ...] = ()
    # The cached ``factored_weight`` result and its key (class defaults: older pickles).
    _factors: tuple[Tensor, Tensor] | None = None
    _factors_key: tuple | None = None
    # True while computing for a state the other path (weight / factors) already stepped.
    _reuse_step: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._weight_grad_hooks: OrderedDict[int, Callable[[Tensor], Any]] = OrderedDict()
        self._cached: Tensor | None = None
        self._cached_key: tuple | None = None

    def add_weight_grad_hook(self, fn: Callable[[Tensor], Any]) -> RemovableHandle:
        """Call ``fn(grad)`` with the gradient w.r.t. the *effective* weight.

        ``fn`` is called once per backward pass through a computed weight, with the
        total gradient (a layer used on two batches before one backward gets their
        sum). Returns a handle whose ``remove()`` detaches ``fn``.
        """
        handle = RemovableHandle(self._weight_grad_hooks)
        self._weight_grad_hooks[handle.id] = fn
        return handle

    def forward(self, layer: nn.Module) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def factors(self, layer: nn.Module) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """``(tied, coef)`` with ``W_eff = coef * tied``; ``coef`` is 0-d, or broadcastable
        to the weight with one value per output unit (weight normalization's lengths).

        ``tied`` is the raw weight itself (a view, no copy) and carries the gradient of
        everything ``coef`` hides that autograd does not see through ``coef``; see
        ``_forward`` for why a layer computes ``map(x, tied) * coef`` when it can.
        """
        raise NotImplementedError

    def observe_input(self, layer: nn.Module, x: Tensor) -> None:
        """Hook for methods that depend on the input's shape (exact SN)."""

    def takes_step(self) -> bool:
        """Whether the computation under way takes an estimation step (power iteration).

        True in training mode, except when the same state was already computed the
        other way (``layer.weight`` and the layer's forward at another batch size share
        one step, as two forwards at one batch size do).
        """
        return self.training and not self._reuse_step

    def _cache_key(self) -> tuple | None:
        grad = torch.is_grad_enabled()
        if not _CACHE_ENABLED or (self.training and not grad):
            return None
        # requires_grad too: a weight computed while the layer was frozen (a GAN's G step
        # through D) has no graph back to the raw tensors, and must not be reused.
        state = tensor_state(
            t for t in (*self._parameters.values(), *self._buffers.values()) if t is not None
        )
        return None if state is None else (state, grad, self.training)

    def _invalidate(self, grad: Tensor | None = None) -> None:
        _set(self, _cached=None, _cached_key=None, _factors=None, _factors_key=None)

    # Eager under torch.compile (a graph break per layer; the layer's own op stays compiled):
    # the cache then works the same compiled or not, and inductor (torch 2.13) mis-compiles
    # the in-place power step followed by the saved vectors (wrong weight gradients). The
    # disabled wrapper is only entered while compiling: outside, it costs ~0.1 ms a call.
    def effective_weight(self, layer: nn.Module) -> Tensor:
        """The effective weight: ``forward(layer)`` in float32, cached (see the class doc)."""
        if torch.compiler.is_compiling():
            return self._effective_weight_eagerly(layer)
        return self._effective_weight(layer)

    @torch.compiler.disable
    def _effective_weight_eagerly(self, layer: nn.Module) -> Tensor:
        return self._effective_weight(layer)

    def _effective_weight(self, layer: nn.Module) -> Tensor:
        key = self._cache_key()
        if key is not None and key == self._cached_key:
            return self._cached
        _set(self, _reuse_step=key is not None and key == self._factors_key)
        try:
            with _float32(self):
                weight = self(layer)
        finally:
            _set(self, _reuse_step=False)
        if weight.requires_grad:
            if self.needs_invalidate_hook:
                weight.register_hook(self._invalidate)
            for fn in self._weight_grad_hooks.values():
                weight.register_hook(fn)
        if key is not None:
            # The forward may have updated buffers in place (power iteration): key after it.
            _set(self, _cached=weight, _cached_key=self._cache_key())
        return weight

    def factored_weight(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """``factors(layer)`` in float32, cached like ``effective_weight`` (never compiled).

        Weight-gradient hooks see the gradient w.r.t. the effective weight, as there:
        the gradient reaching ``tied`` is ``coef`` times it.
        """
        key = self._cache_key()
        if key is not None and key == self._factors_key:
            return self._factors
        _set(self, _reuse_step=key is not None and key == self._cached_key)
        try:
            with _float32(self):
                tied, coef = self.factors(layer)
        finally:
            _set(self, _reuse_step=False)
        if tied.requires_grad:
            if self.needs_invalidate_hook:
                tied.register_hook(self._invalidate)
            for fn in self._weight_grad_hooks.values():
                tied.register_hook(_per_effective_weight(fn, coef.detach()))
        if key is not None:
            _set(self, _factors=(tied, coef), _factors_key=self._cache_key())
        return tied, coef

    def __getstate__(self) -> dict:
        # Neither the cached non-leaf tensors nor the instruments' hooks are part of the state.
        state = self.__dict__.copy()
        state["_cached"] = None
        state["_cached_key"] = None
        state.pop("_factors", None)
        state.pop("_factors_key", None)
        for name in self.transient_attrs:
            state.pop(name, None)
        state["_weight_grad_hooks"] = OrderedDict()
        return state


def tensor_state(tensors: Iterable[Tensor], requires_grad: bool = True) -> tuple | None:
    """``(storage, version counter[, requires_grad])`` of each tensor: it changes with every
    in-place write (an optimizer step, ``load_state_dict``). None for inference tensors,
    which have no version counter."""
    try:
        if not requires_grad:
            return tuple((t.data_ptr(), t._version) for t in tensors)
        return tuple((t.data_ptr(), t._version, t.requires_grad) for t in tensors)
    except RuntimeError:
        return None


def keep(module: nn.Module, attr: str, state: tuple | None, value: Any) -> None:
    """Keep ``value`` under ``attr`` for one ``take_kept`` that sees the same ``state``
    (a ``tensor_state``; nothing is kept where it is None)."""
    if state is not None:
        _set(module, **{attr: (state, value)})


def take_kept(module: nn.Module, attr: str, state: Callable[[], tuple | None]) -> Any:
    """What ``keep`` left under ``attr`` if ``state()`` is the same as then, else None; either
    way it is gone afterwards (used once). ``state`` is only called when something was kept
    (the training step's hot path, where mostly nothing is)."""
    kept = module.__dict__.pop(attr, None)
    return kept[1] if kept is not None and kept[0] == state() else None


def _set(module: nn.Module, **attrs: Any) -> None:
    """Set plain (non-parameter, non-buffer, non-module) attributes of ``module``.

    ``nn.Module.__setattr__`` checks each value against parameters, buffers and modules
    (~5 us an attribute); the per-forward bookkeeping here skips that.
    """
    module.__dict__.update(attrs)


def _per_effective_weight(fn: Callable[[Tensor], Any], coef: Tensor) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:
        fn(grad / coef)

    return hook


def set_output_scaling(mode: str) -> None:
    """Where SN-family and eqlr layers apply their scalar coefficient, globally.

    ``"auto"`` (default): on the output where it has fewer elements than the weight (half
    as many for weight normalization, whose per-unit lengths cost more passes over the
    output: ``Reparametrization.output_cost``), on the weight elsewhere; ``"always"`` /
    ``"never"``: always on the output / the weight.
    The results agree up to float rounding; only speed and memory differ.
    """
    global _OUTPUT_SCALING
    if mode not in OUTPUT_SCALING_MODES:
        raise ValueError(f"output scaling mode must be one of {OUTPUT_SCALING_MODES}, got {mode!r}")
    _OUTPUT_SCALING = mode


def _scales_output(layer: nn.Module, reparam: Reparametrization, x: Tensor) -> bool:
    if not reparam.factorable or _OUTPUT_SCALING == "never" or torch.compiler.is_compiling():
        return False
    # The decision depends only on shapes and the mode: kept per layer for the last input
    # shape (a training loop calls each layer with a few shapes only).
    key = (x.shape, _OUTPUT_SCALING, reparam.raw_weight.shape)
    kept = layer.__dict__.get("_normlab_scales_output")
    if kept is not None and kept[0] == key:
        return kept[1]
    if layer._normlab_base.forward not in STOCK_FORWARDS:
        decision = False
    elif _OUTPUT_SCALING == "always":
        decision = True
    else:
        decision = output_numel(layer, x) * reparam.output_cost < reparam.raw_weight.numel()
    layer.__dict__["_normlab_scales_output"] = (key, decision)
    return decision


def set_weight_cache(enabled: bool) -> None:
    """Turn the per-update cache of effective weights on (default) or off, globally."""
    global _CACHE_ENABLED
    _CACHE_ENABLED = bool(enabled)


def _float32(module: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast off for ``module``'s device while it is on (entering it costs ~10 us)."""
    device_type = _device_type(module)
    if _autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


@torch.compiler.disable
def _observe_input_eagerly(reparam: Reparametrization, layer: nn.Module, x: Tensor) -> None:
    with _float32(reparam):
        reparam.observe_input(layer, x)


def _device_type(module: nn.Module) -> str:
    for t in module._parameters.values():
        if t is not None:
            return t.device.type
    return "cpu"


def _get_weight(self: nn.Module) -> Tensor:
    return self._modules[REPARAM_ATTR].effective_weight(self)


def _get_bias(self: nn.Module) -> Tensor | None:
    reparam = self._modules[REPARAM_ATTR]
    if reparam.owns_bias:
        return reparam.effective_bias()
    params = self._parameters
    if "bias" in params:
        return params["bias"]
    raise AttributeError("bias")


def _set_weight(self: nn.Module, value: Any) -> None:
    raise AttributeError(
        f"the weight of this {type(self).__name__} is computed by its "
        f"'{self._modules[REPARAM_ATTR].method}' reparameterization; set the raw "
        f"tensors in .{REPARAM_ATTR} instead, or call normlab.remove() first"
    )


def _forward(self: nn.Module, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """The layer's forward, with its weight scaled on whichever side costs less.

    A layer whose effective weight is ``coef * W`` (``coef`` a scalar, or one value per
    output unit) computes ``map(x, coef * W) = coef * map(x, W)``. Where the output is smaller
    than the weight (``output_cost`` times; the deep layers of a CNN at small batch), scaling the
    output instead saves a weight-sized copy in memory (the conv would keep ``coef * W``
    for its backward) and a pass over the weight in each direction; the gradient through
    ``coef`` reaches ``W`` by ``tied``'s backward (see ``Reparametrization.factors``).
    Only stock layer classes take this path: a subclass with its own ``forward`` runs it,
    with the weight scaled.
    """
    reparam = self._modules[REPARAM_ATTR]
    if reparam.needs_input:
        if torch.compiler.is_compiling():
            _observe_input_eagerly(reparam, self, input)
        else:
            with _float32(reparam):
                reparam.observe_input(self, input)
    if not args and not kwargs and _scales_output(self, reparam, input):
        tied, coef = reparam.factored_weight(self)
        return scaled_map(self, input, tied, coef, self.bias)
    return self._normlab_base.forward(self, input, *args, **kwargs)


def _reduce_ex(self: nn.Module, protocol: int) -> tuple:
    # Pickle and deepcopy as (create an instance of the original class, then set state).
    return (_new_reparametrized, (self._normlab_base,), self.__dict__.copy())


def _new_reparametrized(base: type[nn.Module]) -> nn.Module:
    """Unpickling helper: an empty instance of the wrapped subclass of ``base``."""
    obj = base.__new__(base)
    obj.__class__ = wrapped_class(base)
    return obj


def wrapped_class(base: type[nn.Module]) -> type[nn.Module]:
    """The reparameterized subclass of layer class ``base`` (made once, then cached)."""
    cls = _WRAPPED_CLASSES.get(base)
    if cls is None:
        namespace = {
            "_normlab_base": base,
            "weight": property(_get_weight, _set_weight, doc="Effective weight."),
            "bias": property(_get_bias, doc="Effective bias (None where the layer has none)."),
            "forward": _forward,
            "__reduce_ex__": _reduce_ex,
            "__module__": base.__module__,
        }
        cls = type(f"Reparametrized{base.__name__}", (base,), namespace)
        _WRAPPED_CLASSES[base] = cls
    return cls


def is_reparametrized(module: nn.Module) -> bool:
    """Whether ``module`` carries a normlab reparameterization."""
    return REPARAM_ATTR in module._modules and hasattr(type(module), "_normlab_base")


def reparametrization_of(module: nn.Module) -> Reparametrization | None:
    """The ``Reparametrization`` of ``module``, or None."""
    return module._modules[REPARAM_ATTR] if is_reparametrized(module) else None


def check_can_register(module: nn.Module, name: str = "") -> None:
    """Raise a clear error if ``module`` cannot take a (new) reparameterization."""
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
    weight = module._parameters.get("weight")
    if weight is None:
        raise ValueError(f"{where} has no weight parameter to reparameterize")
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(
            f"{where} has {bad} non-finite (NaN/Inf) weight entries; refusing to register"
        )


def register(module: nn.Module, reparam: Reparametrization) -> nn.Module:
    """Attach ``reparam`` to ``module``; its raw tensors must already be in ``reparam``.

    Removes ``weight`` (and ``bias`` where ``reparam.owns_bias``) from the layer's own
    parameters, since ``reparam`` now holds them.
    """
    del module._parameters["weight"]
    if reparam.owns_bias and "bias" in module._parameters:
        del module._parameters["bias"]
    module.add_module(REPARAM_ATTR, reparam)
    module.__class__ = wrapped_class(type(module))
    return module


@torch.no_grad()
def unregister(module: nn.Module) -> nn.Module:
    """Bake the current effective weight (and bias) into plain parameters.

    The effective tensors are read with the reparameterization in eval mode, so
    no power-iteration step happens and the layer's eval output is unchanged.
    """
    reparam: Reparametrization = module._modules[REPARAM_ATTR]
    was_training = reparam.training
    reparam.eval()
    try:
        weight = module.weight.detach().clone()
        bias = reparam.effective_bias() if reparam.owns_bias else None
        bias = None if bias is None else bias.detach().clone()
    finally:
        reparam.train(was_training)
    requires_grad = any(p.requires_grad for p in reparam.parameters())
    if reparam.owns_bias:
        new_bias = None if bias is None else nn.Parameter(bias, requires_grad=requires_grad)
    else:
        new_bias = module._parameters.pop("bias", _MISSING)
    module.__class__ = module._normlab_base
    del module._modules[REPARAM_ATTR]
    module.__dict__.pop("_normlab_scales_output", None)
    # Rebuild the parameters in PyTorch's order: weight, then bias.
    module._parameters["weight"] = nn.Parameter(weight, requires_grad=requires_grad)
    if new_bias is not _MISSING:
        module._parameters["bias"] = new_bias
    return module
