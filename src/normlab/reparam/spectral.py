"""Spectral normalization (Miyato et al., ICLR 2018) and the variants of Lin et al. (NeurIPS 2021).

One power-iteration engine serves four methods::

    SN     W_eff =     W / sigma(W_mat)                      W_mat = W.reshape(out, -1)
    BSN    W_eff =     W / ((sigma(W_mat) + sigma(W_mat_t)) / 2)  W_mat_t = (in, out*k*k)
    SSN    W_eff = c * W / sigma(W_mat)
    BSSN   W_eff = c * W / ((sigma(W_mat) + sigma(W_mat_t)) / 2)

``sigma(M)`` is the largest singular value of ``M``, estimated by power iteration with
persistent vectors ``u``, ``v``, one step per training forward (forwards that share one
backward, such as D(real) and D(fake), share one step: see ``Reparametrization``)::

    v <- normalize(M^T u),   u <- normalize(M v),   sigma = u^T M v

Gradients flow through ``sigma`` (``u`` and ``v`` are constants of the step). In eval
mode the vectors are frozen. At registration the vectors are warmed up with
``WARMUP_ITERATIONS`` steps, so that eval before any training forward is already right.

Why it works (Lin et al.): dividing by ``sigma`` bounds the discriminator's Lipschitz
constant, so its gradients cannot explode; and since ``sigma(W_mat)`` of a random
matrix grows like ``sqrt(fan_in)``, SN keeps each layer's weights near the LeCun-init
scale ``std ~ 1/sqrt(fan_in)`` *throughout* training, so its gradients do not vanish.
BSN averages in the transposed reshape (Xavier's fan-in/fan-out average); the
constant ``c`` of SSN/BSSN plays the part of Kaiming's gain.

``ExactSpectralNorm`` divides instead by the operator norm of the convolution itself
(stride, padding and dilation included) on the input shape it is called with, by power
iteration through the conv and its adjoint. That norm is larger than the reshaped
matrix's, so exact ("strict") SN shrinks conv layers more: the vanishing gradients
Lin et al. blame for its poor results out of the box.

Example::

    >>> import torch.nn as nn, normlab as nl
    >>> conv = nl.spectral_norm(nn.Conv2d(64, 128, 3), bidirectional=True, scale=1.2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.reparam._layers import (
    conv_adjoint,
    conv_args,
    conv_weight_grad,
    input_shape_of,
    linear_map,
    output_dim,
    sub_conv_weight_grad_,
)
from normlab.reparam._power import (
    as3d,
    mat_t_vec,
    normalize_weight,
    power_step_,
    sigma_of,
    tie_weight,
)
from normlab.reparam._wrap import (
    Reparametrization,
    _set,
    check_can_register,
    keep,
    register,
    take_kept,
    tensor_state,
)

#: Power-iteration steps run at registration (PyTorch's parametrization uses 15 too).
WARMUP_ITERATIONS = 15


def _normalize(x: Tensor, eps: float) -> Tensor:
    return F.normalize(x, dim=0, eps=eps)


class SpectralNorm(Reparametrization):
    """``W_eff = scale * W / sigma``, sigma from one or (bidirectional) two reshapes of ``W``.

    Buffers ``u0, v0`` hold the power vectors of ``W.reshape(out, -1)``; with
    ``bidirectional`` also ``u1, v1`` for the transposed reshape ``(in, out * k * k)``.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        out_dim: int,
        n_power_iterations: int,
        eps: float,
        scale: float,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        self.raw_weight = weight
        self.out_dim = out_dim
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.scale = scale
        self.bidirectional = bidirectional
        self.method = (
            ("bssn" if scale != 1.0 else "bsn")
            if bidirectional
            else ("ssn" if scale != 1.0 else "sn")
        )
        # Row dims of the matrices whose sigma is used: the output dim, then the input dim.
        self._row_dims = (out_dim, 1 - out_dim) if bidirectional else (out_dim,)
        with torch.no_grad():
            w3 = as3d(weight.detach())
            for i, row_dim in enumerate(self._row_dims):
                rows = w3.shape[row_dim]
                u = _normalize(torch.randn(rows, dtype=w3.dtype, device=w3.device), eps)
                v = _normalize(mat_t_vec(w3, row_dim, u), eps)
                self.register_buffer(f"u{i}", u)
                self.register_buffer(f"v{i}", v)
        self._power_iteration(WARMUP_ITERATIONS)
        #: The last sigma estimates (detached), one per reshape; for the instruments.
        self.last_sigmas: tuple[Tensor, ...] = ()

    def _vectors(self) -> list[Tensor]:
        return [
            t
            for i in range(len(self._row_dims))
            for t in (self._buffers[f"u{i}"], self._buffers[f"v{i}"])
        ]

    @torch.no_grad()
    def _power_iteration(self, n: int) -> tuple[Tensor, ...]:
        """``n`` steps on every reshape (buffers updated in place); returns the sigmas."""
        w3 = as3d(self.raw_weight.detach())
        vectors = self._vectors()
        kept = self._kept_products(vectors)
        sigmas = []
        for i, row_dim in enumerate(self._row_dims):
            u, v = vectors[2 * i], vectors[2 * i + 1]
            for step in range(n):
                mt_u = kept[i] if step == 0 and kept is not None else None
                sigma = power_step_(w3, row_dim, u, v, self.eps, mt_u)
            sigmas.append(sigma)
        return tuple(sigmas)

    @torch.no_grad()
    def current_sigmas(self) -> tuple[Tensor, ...]:
        """``u_i^T M_i v_i`` for each reshape, from the current vectors (no step).

        The products ``M_i^T u_i`` that ``sigma_of`` computes (reshapes with rows along
        dim 1: BSN's transposed one, SN's on transposed convs) are kept, keyed on the
        weight's and the vectors' state: the next power step on the same weight starts
        from them, so G's step through a frozen D in eval costs D's next step one pass
        over the weight less.
        """
        w3 = as3d(self.raw_weight.detach())
        vectors = self._vectors()
        pairs = [
            sigma_of(w3, row_dim, vectors[2 * i], vectors[2 * i + 1])
            for i, row_dim in enumerate(self._row_dims)
        ]
        if any(mt_u is not None for _, mt_u in pairs):
            keep(self, "_mt_u_kept", self._state(vectors), [mt_u for _, mt_u in pairs])
        return tuple(sigma for sigma, _ in pairs)

    transient_attrs = ("_mt_u_kept",)

    def _state(self, vectors: list[Tensor]) -> tuple | None:
        return tensor_state((self.raw_weight, *vectors), requires_grad=False)

    def _kept_products(self, vectors: list[Tensor]) -> list[Tensor] | None:
        """The ``M_i^T u_i`` kept by ``current_sigmas``, if weight and vectors are unchanged."""
        return take_kept(self, "_mt_u_kept", lambda: self._state(vectors))

    def _sigma(self) -> Tensor:
        """This forward's sigma (after its step in training), the mean over the reshapes."""
        if self.takes_step():
            sigmas = self._power_iteration(self.n_power_iterations)
        else:
            sigmas = self.current_sigmas()
        _set(self, last_sigmas=sigmas)
        sigma = sigmas[0] if len(sigmas) == 1 else (sigmas[0] + sigmas[1]) / 2
        return sigma.clamp_min(self.eps)

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and self.raw_weight.requires_grad

    def forward(self, layer: nn.Module) -> Tensor:
        sigma = self._sigma()
        if not self._needs_grad():  # (a frozen D in G's step): no graph to build
            return self.raw_weight * (self.scale / sigma)
        return normalize_weight(
            self.raw_weight, sigma, self.scale, self._row_dims, self._vectors(), owner=self
        )

    factorable = True
    needs_invalidate_hook = False  # the backwards of ``normalize_weight``/``tie_weight`` do it

    def factors(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """``(W, scale / sigma)``: the same step and sigma as ``forward``, without the copy."""
        sigma = self._sigma()
        coef = (self.scale / sigma).detach()
        if not self._needs_grad():
            return self.raw_weight, coef
        tied = tie_weight(self.raw_weight, sigma, self._row_dims, self._vectors(), owner=self)
        return tied, coef

    def effective_bias(self) -> Tensor | None:  # pragma: no cover - owns_bias is False
        return None

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, scale={self.scale:g}, bidirectional={self.bidirectional}, "
            f"n_power_iterations={self.n_power_iterations}"
        )


class ExactSpectralNorm(Reparametrization):
    """``W_eff = scale * W / ||A_W||``: the operator norm of the layer's map on its input shape.

    The buffer ``v`` is a unit vector of one input's shape ``(1, C, *spatial)``; it is
    (re)initialised and warmed up whenever the layer sees a new input shape, and takes
    one step of power iteration on ``A^T A`` per training forward. ``sigma = ||A_W v||``
    is differentiable in ``W``.
    """

    method = "sn_exact"
    needs_input = True

    def __init__(
        self, weight: nn.Parameter, n_power_iterations: int, eps: float, scale: float
    ) -> None:
        super().__init__()
        self.raw_weight = weight
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.scale = scale
        self.register_buffer("v", torch.empty(0, dtype=weight.dtype, device=weight.device))
        self.last_sigmas: tuple[Tensor, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape the current estimate belongs to (None before any)."""
        return tuple(self.v.shape[1:]) if self.v.numel() else None

    def observe_input(self, layer: nn.Module, x: Tensor) -> None:
        shape = input_shape_of(layer, x)
        if shape != self.input_shape:
            self.reset(layer, shape)

    @torch.no_grad()
    def reset(self, layer: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Start the estimate over for inputs of ``input_shape`` (one sample, no batch dim)."""
        weight = self.raw_weight.detach()
        v = torch.randn((1, *input_shape), dtype=weight.dtype, device=weight.device)
        self.v = v / v.norm().clamp_min(self.eps)
        self._power_iteration(layer, WARMUP_ITERATIONS)

    @torch.no_grad()
    def _power_iteration(self, layer: nn.Module, n: int) -> tuple[Tensor, Tensor] | None:
        """``n`` steps ``u <- N(A v)``, ``v <- N(A^T u)``; returns the last ``(u, u^T A v)``.

        ``A^T`` is the conv's own input-gradient kernel; for maps that are not one
        zero-padded conv (circular padding, ``padding="same"``) autograd takes the adjoint
        and None is returned.
        """
        weight = self.raw_weight.detach()
        fn = linear_map(layer, weight)
        args = conv_args(layer)
        v = self.v
        u = sigma = None
        kept = self._kept_image()
        for step in range(n):
            if args is None:
                with torch.enable_grad():
                    x = v.detach().requires_grad_(True)
                    y = fn(x)
                    (back,) = torch.autograd.grad(y, x, y.detach())
                v = back / back.norm().clamp_min(self.eps)
                continue
            y = kept if step == 0 and kept is not None else fn(v)
            u = y / y.norm().clamp_min(self.eps)
            back = conv_adjoint(args, u, v, weight)
            sigma = back.norm()  # = u^T A v_new with v_new = back / ||back||
            v = back / sigma.clamp_min(self.eps)
        self.v.copy_(v)
        return None if u is None else (u, sigma)

    def _estimate(self, layer: nn.Module) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(sigma, u, v)`` of this forward: after a step ``sigma = u^T A v`` (detached);
        without one (eval) ``u`` is None and ``sigma = ||A_W v||``, differentiable in ``W``.
        """
        if self.input_shape is None:
            raise RuntimeError(
                "the exact spectral norm of this layer depends on its input shape, which it has "
                "not seen yet: call the model on a batch first (or use method 'sn')"
            )
        weight = self.raw_weight
        stepped = (
            self._power_iteration(layer, self.n_power_iterations) if self.takes_step() else None
        )
        v = self.v.clone(memory_format=torch.contiguous_format)
        if stepped is not None:
            u, sigma = stepped
        else:
            image = linear_map(layer, weight)(v.to(weight.dtype))
            if not image.requires_grad:  # G's step through a frozen D: D's next step reuses it
                keep(self, "_image_kept", self._state(), image)
            u, sigma = None, image.norm()
        _set(self, last_sigmas=(sigma.detach(),))
        return sigma, u, v

    def _state(self) -> tuple | None:
        return tensor_state((self.raw_weight, self.v), requires_grad=False)

    def _kept_image(self) -> Tensor | None:
        """``A_W v`` kept by an eval forward, if the weight and ``v`` are unchanged since."""
        return take_kept(self, "_image_kept", self._state)

    transient_attrs = ("_image_kept",)

    def forward(self, layer: nn.Module) -> Tensor:
        sigma, u, v = self._estimate(layer)
        if u is not None:  # d sigma / dW by one weight-gradient conv
            sigma = _BilinearSigma.apply(self.raw_weight, sigma, u, v, conv_args(layer))
        return self.raw_weight * (self.scale / self._nonzero(sigma))

    def _nonzero(self, sigma: Tensor) -> Tensor:
        """``sigma``, or 1 where the layer's map is zero on this input shape (``sigma <= eps``,
        e.g. a transposed conv whose padding crops every tap): nothing to normalize there,
        and dividing by eps would make the weight 1e12 times too large for no output."""
        return torch.where(sigma > self.eps, sigma, torch.ones_like(sigma))

    factorable = True

    def factors(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """``(W, scale / sigma)``: after a step the gradient through sigma is added by
        ``tied``'s backward (in place); in eval autograd takes it through ``coef``."""
        sigma, u, v = self._estimate(layer)
        weight = self.raw_weight
        if u is None:
            return weight.view_as(weight), self.scale / self._nonzero(sigma)
        sigma = self._nonzero(sigma)
        tied = _ExactTie.apply(weight, sigma, u, v, conv_args(layer))
        return tied, (self.scale / sigma).detach()

    def effective_bias(self) -> Tensor | None:  # pragma: no cover - owns_bias is False
        return None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The vector's shape is only known once an input was seen: take the saved one's.
        saved = state_dict.get(prefix + "v")
        if saved is not None and saved.shape != self.v.shape:
            self.v = torch.empty_like(saved, device=self.v.device, dtype=self.v.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, input_shape={self.input_shape}"


class _BilinearSigma(torch.autograd.Function):
    """``sigma = u^T A_W v`` (given), with ``d sigma / dW`` = the conv's weight gradient."""

    @staticmethod
    def forward(ctx, weight, sigma, u, v, args):
        ctx.save_for_backward(weight, u, v)
        ctx.args = args
        return sigma.clone()

    @staticmethod
    def backward(ctx, grad_sigma):
        weight, u, v = ctx.saved_tensors
        grad = conv_weight_grad(ctx.args, u, v, weight).mul_(grad_sigma)
        return grad, None, None, None, None


class _ExactTie(torch.autograd.Function):
    """``W`` itself for ``y = A_W(x) * scale / sigma``, ``sigma = u^T A_W v`` (as ``_power._Tie``).

    Backward: ``G - <G, W> / sigma * d sigma / dW``, the last term a weight-gradient
    conv of ``(u, v)`` subtracted in place from the incoming gradient.
    """

    @staticmethod
    def forward(ctx, weight, sigma, u, v, args):
        ctx.save_for_backward(weight, sigma, u, v)
        ctx.args = args
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_out):
        weight, sigma, u, v = ctx.saved_tensors
        grad = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        coef = torch.dot(grad.reshape(-1), weight.reshape(-1)) / sigma
        return sub_conv_weight_grad_(grad, ctx.args, u, v, weight, coef), None, None, None, None


def _check_number(name: str, value: float, where: str, integer: bool = False) -> None:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "a positive integer" if integer else "a positive number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({where})")
    if not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r} ({where})")


def spectral_norm(
    module: nn.Module,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    scale: float = 1.0,
    bidirectional: bool = False,
    exact: bool = False,
    *,
    name: str = "",
) -> nn.Module:
    """Put spectral normalization (or a variant) on one layer; returns the layer.

    Args:
        module: a Linear, ConvNd, ConvTransposeNd or Embedding layer.
        n_power_iterations: power-iteration steps per training forward (forwards sharing
            one backward share them).
        eps: added safety in vector normalisation and the division by sigma.
        scale: the constant ``c`` of SSN/BSSN multiplying the normalised weight.
        bidirectional: BSN: divide by the mean of the sigmas of the ``(out, in*k*k)`` and
            ``(in, out*k*k)`` reshapes (the same as SN for Linear and Embedding).
        exact: divide by the operator norm of the layer's map on the input shape it is
            called with (for Linear and Embedding that is SN itself).
        name: the layer's qualified name, used in error messages.
    """
    where = f"layer '{name}'" if name else type(module).__name__
    _check_number("n_power_iterations", n_power_iterations, where, integer=True)
    _check_number("eps", eps, where)
    _check_number("scale", scale, where)
    if exact and bidirectional:
        raise ValueError(f"exact and bidirectional spectral norms cannot be combined ({where})")
    check_can_register(module, name)
    weight: nn.Parameter = module._parameters["weight"]
    if exact and not isinstance(module, nn.Linear | nn.Embedding):
        reparam: Reparametrization = ExactSpectralNorm(
            weight, n_power_iterations, eps, float(scale)
        )
    else:
        reparam = SpectralNorm(
            weight, output_dim(module), n_power_iterations, eps, float(scale), bidirectional
        )
        if exact:
            reparam.method = "sn_exact"
    return register(module, reparam)
