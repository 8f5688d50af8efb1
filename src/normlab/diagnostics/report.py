"""``layer_report``: a one-off, exact look at every weighted layer of a model on one batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from normlab.diagnostics._common import (
    activation_constant,
    effective_weight,
    is_conv,
    layer_label,
    method_of,
    weighted_layers,
)
from normlab.reparam import fan_in, operator_norm, output_dim, reparametrization_of
from normlab.reparam._layers import as_matrix, input_shape_of


@dataclass
class LayerReport:
    """What ``layer_report`` returns; ``str(report)`` is a table.

    ``layers[name]`` holds, per weighted layer: ``method``, ``sigma`` (largest singular
    value of the effective weight reshaped ``(out, -1)``, the quantity SN divides by),
    ``op_norm`` (for convolutions the exact operator norm of the layer's map on the batch's
    input shape; ``sigma`` for Linear), ``std_sqrt_fan_in`` (effective weight std x
    sqrt(fan_in): 1 at LeCun's init scale), ``weight_grad_norm`` (norm of the gradient of
    the loss w.r.t. the effective weight) and ``input_shape``.
    ``lipschitz_bound`` is the product of the ``op_norm`` s and of the activations'
    constants, an upper bound on the Lipschitz constant of a chain of layers (as the
    standard CNN); ``lipschitz_bound_reshaped`` uses ``sigma`` instead (what SN controls,
    *not* a bound for convolutions).
    """

    layers: dict[str, dict[str, Any]]
    lipschitz_bound: float
    lipschitz_bound_reshaped: float
    activation_constant: float
    loss: float
    unknown_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "lipschitz_bound": self.lipschitz_bound,
            "lipschitz_bound_reshaped": self.lipschitz_bound_reshaped,
            "activation_constant": self.activation_constant,
            "loss": self.loss,
            "unknown_modules": list(self.unknown_modules),
        }

    def __str__(self) -> str:
        head = (
            f"{'layer':<16}{'method':<10}{'sigma':>10}{'op_norm':>10}"
            f"{'std*sqrt(fan_in)':>18}{'|grad W|':>12}"
        )
        rows = [head, "-" * len(head)]
        for name, r in self.layers.items():
            rows.append(
                f"{name:<16}{r['method']:<10}{r['sigma']:>10.4g}{r['op_norm']:>10.4g}"
                f"{r['std_sqrt_fan_in']:>18.4g}{r['weight_grad_norm']:>12.4g}"
            )
        rows.append(
            f"Lipschitz bound {self.lipschitz_bound:.4g} (operator norms x activations "
            f"{self.activation_constant:.4g}); with reshaped sigmas "
            f"{self.lipschitz_bound_reshaped:.4g}"
        )
        if self.unknown_modules:
            rows.append("no known Lipschitz constant for: " + ", ".join(self.unknown_modules))
        return "\n".join(rows)


def _default_loss(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__}; pass loss_fn to turn it into a scalar"
        )
    return out.float().mean()


def layer_report(
    model: nn.Module,
    *batch: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    exact: bool = True,
) -> LayerReport:
    """Per weighted layer of ``model``: sigmas, weight scale and gradient on one batch.

    Runs ``model(*batch)`` once in its current mode, takes ``loss = loss_fn(output)``
    (default: the mean output, e.g. a discriminator's mean score) and its gradient w.r.t.
    each layer's *effective* weight. Nothing of the model changes: buffers (BatchNorm
    statistics, SN power vectors) are restored and ``.grad`` is not touched. Sigmas are
    exact (SVD), and with ``exact`` the convolutions' operator norms on the batch's shapes
    are computed by power iteration to convergence.

    Example::

        >>> rep = nl.diagnostics.layer_report(D, real_images)
        >>> print(rep)                       # a table
        >>> rep.layers["features.0"]["weight_grad_norm"], rep.lipschitz_bound
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not batch:
        raise TypeError("layer_report needs the model's inputs: layer_report(model, x, ...)")
    layers = weighted_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no weighted layer (Linear, ConvNd, ...)")
    loss_fn = loss_fn or _default_loss

    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    shapes: dict[str, tuple[int, ...]] = {}
    grads: dict[str, Tensor] = {}
    handles = []

    def shape_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                shapes.setdefault(name, input_shape_of(mod, args[0]))

        return hook

    def grad_hook(name: str) -> Callable:
        def hook(g: Tensor) -> None:
            g = g.detach()
            grads[name] = grads[name] + g if name in grads else g.clone()

        return hook

    leaf_weights: list[tuple[str, Tensor]] = []
    for name, layer in layers:
        handles.append(layer.register_forward_pre_hook(shape_hook(name)))
        reparam = reparametrization_of(layer)
        if reparam is not None:
            handles.append(reparam.add_weight_grad_hook(grad_hook(name)))
        elif layer.weight.requires_grad:
            leaf_weights.append((name, layer.weight))
    try:
        with torch.enable_grad():
            out = model(*batch)
            loss = loss_fn(out)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor")
            params = [p for p in model.parameters() if p.requires_grad]
            if loss.requires_grad and params:
                got = torch.autograd.grad(loss, params, allow_unused=True)
                by_id = {id(p): g for p, g in zip(params, got)}
                for name, w in leaf_weights:
                    g = by_id.get(id(w))
                    if g is not None:
                        grads[name] = g.detach()
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and b.shape == saved[n].shape:
                    b.copy_(saved[n])

    act, unknown = activation_constant(model)
    rows: dict[str, dict[str, Any]] = {}
    bound = bound_reshaped = 1.0
    for name, layer in layers:
        w = effective_weight(layer).float()
        mat = as_matrix(w, output_dim(layer))
        sigma = float(torch.linalg.matrix_norm(mat, ord=2))
        if exact and is_conv(layer) and name in shapes:
            op = operator_norm(layer, shapes[name], weight=w, n_iter=500, tol=1e-7)
        else:
            op = sigma if not is_conv(layer) else math.nan
        g = grads.get(name)
        rows[layer_label(name)] = {
            "method": method_of(layer),
            "sigma": sigma,
            "op_norm": op,
            "std_sqrt_fan_in": float(w.std()) * math.sqrt(fan_in(layer)) if w.numel() > 1 else 0.0,
            "weight_grad_norm": float(g.norm()) if g is not None else 0.0,
            "input_shape": list(shapes.get(name, ())),
        }
        bound *= op
        bound_reshaped *= sigma
    return LayerReport(
        layers=rows,
        lipschitz_bound=bound * act,
        lipschitz_bound_reshaped=bound_reshaped * act,
        activation_constant=act,
        loss=float(loss.detach()),
        unknown_modules=unknown,
    )
