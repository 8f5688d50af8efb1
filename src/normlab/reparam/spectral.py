"""Spectral normalization (Miyato et al., ICLR 2018) and the variants of Lin et al. (NeurIPS 2021).

One power-iteration engine serves four methods::

    SN     W_eff =     W / sigma(M0)                       M0 = W.reshape(out, -1)
    BSN    W_eff =     W / ((sigma(M0) + sigma(M1)) / 2)   M1 = W.movedim(1, 0).reshape(in, -1)
    SSN    W_eff = c * W / sigma(M0)
    BSSN   W_eff = c * W / ((sigma(M0) + sigma(M1)) / 2)

``sigma(M)`` is the largest singular value of ``M``, estimated by power iteration with
persistent vectors ``u``, ``v``: each training-mode forward takes ``n_power_iterations``
steps (inside ``nl.cached()``, one per block), as PyTorch's ``spectral_norm`` does::

    v <- normalize(M^T u),   u <- normalize(M v),   sigma = u^T M v

Gradients flow through ``sigma`` with ``u`` and ``v`` held constant (Miyato et al.); in eval
mode the vectors are frozen, so the eval output is an exact function of ``W`` and autograd
differentiates it exactly, to every order. At registration the vectors are warmed up with
``WARMUP_ITERATIONS`` steps, so eval before any training forward is already right.

Why it works (Lin et al.): dividing by ``sigma`` bounds the discriminator's Lipschitz
constant, so its gradients cannot explode; and since ``sigma`` of a random matrix grows like
``sqrt(fan_in)``, SN keeps each layer's weights near the LeCun-init scale
``std ~ 1/sqrt(fan_in)`` *throughout* training, so its gradients do not vanish. BSN averages
in the transposed reshape (Xavier's fan-in/fan-out average); the constant ``c`` of SSN/BSSN
plays the part of Kaiming's gain.

``ExactSpectralNorm`` divides instead by the operator norm of the convolution itself (stride,
padding and dilation included) on the input shape it is called with: ``sigma = ||A_W v||``
with ``v`` a unit input, after which a training forward moves ``v <- N(A^T N(A v))``. That
norm exceeds the reshaped matrix's, so exact ("strict") SN shrinks conv layers more: the
vanishing gradients Lin et al. blame for its poor results out of the box.

Example::

    >>> import torch.nn as nn, normlab as nl
    >>> conv = nl.spectral_norm(nn.Conv2d(64, 128, 3), bidirectional=True, scale=1.2)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.reparam._checks import check_number
from normlab.reparam._layers import (
    conv_adjoint,
    conv_args,
    input_shape_of,
    linear_map,
    output_dim,
    row_blocks,
)
from normlab.reparam._power import (
    as3d,
    mat_t_vec,
    mat_vec,
    normalize,
    normalize_into_,
    power_step_,
)
from normlab.reparam._wrap import (
    Reparametrization,
    check_can_register,
    register,
)

#: Power-iteration steps run at registration (PyTorch's parametrization uses 15 too).
WARMUP_ITERATIONS = 15


class _DividedBySigma(Reparametrization):
    """What both spectral norms hold: ``scale * W / sigma`` with sigma by power iteration."""

    def __init__(
        self, weight: nn.Parameter, n_power_iterations: int, eps: float, scale: float, method: str
    ) -> None:
        super().__init__()
        self.raw_weight = weight
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.scale = scale
        self.method = method
        #: The last sigma estimates (detached); for the instruments.
        self.last_sigmas: tuple[Tensor, ...] = ()


class SpectralNorm(_DividedBySigma):
    """``W_eff = scale * W / sigma``, sigma from one or (bidirectional) two reshapes of ``W``.

    Buffers ``u0, v0`` hold the power vectors of ``W.reshape(out, -1)``; with
    ``bidirectional`` also ``u1, v1`` for the transposed reshape ``(in, out * k * k)``. A
    weight that stacks ``blocks`` matrices along its output dim (attention's Q/K/V) gets one
    sigma (and vectors ``u{i}, v{i}``, reshape by reshape) per block. With one kernel tap
    (Linear, Embedding, 1x1 convs) the transposed reshape is the matrix's transpose, whose
    sigma is the same: BSN is SN there, and one pair of vectors serves.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        out_dim: int,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        scale: float = 1.0,
        bidirectional: bool = False,
        blocks: int = 1,
        method: str = "",
    ) -> None:
        method = method or ("b" if bidirectional else "") + ("ssn" if scale != 1 else "sn")
        super().__init__(weight, n_power_iterations, eps, scale, method)
        self.bidirectional = bidirectional
        self.blocks = blocks
        # With one kernel tap (Linear, Embedding, 1x1 convs) the transposed reshape is the
        # transpose of the first: the same sigma, so BSN is SN there and one estimate serves.
        taps = weight[0, 0].numel() if weight.dim() > 2 else 1
        row_dims = (out_dim, 1 - out_dim) if bidirectional and taps > 1 else (out_dim,)
        #: ``(block, row dim)`` of each matrix whose sigma is estimated, in buffer order.
        self.terms = tuple((b, d) for b in range(blocks) for d in row_dims)
        with torch.no_grad():
            for i, (block, row_dim) in enumerate(self.terms):
                w = self._block(block).detach()
                rows = as3d(w).shape[row_dim]
                u = normalize(torch.randn(rows, dtype=w.dtype, device=w.device), eps)
                v = normalize(mat_t_vec(w, row_dim, u), eps)
                for _ in range(WARMUP_ITERATIONS):
                    power_step_(w, row_dim, u, v, eps)
                self.register_buffer(f"u{i}", u)
                self.register_buffer(f"v{i}", v)

    def _block(self, block: int) -> Tensor:
        w = self.raw_weight
        return w if self.blocks == 1 else w.chunk(self.blocks, dim=0)[block]

    def _sigma(self, i: int, w: Tensor, row_dim: int, step: bool) -> Tensor:
        """``u^T M v`` for term ``i``, after the training step ``step`` (buffers in place)."""
        u, v = self._buffers[f"u{i}"], self._buffers[f"v{i}"]
        if not step:
            return torch.dot(u.clone(), mat_vec(w, row_dim, v.clone()))
        with torch.no_grad():
            for _ in range(self.n_power_iterations - 1):
                power_step_(w.detach(), row_dim, u, v, self.eps)
            normalize_into_(mat_t_vec(w.detach(), row_dim, u), v, self.eps)
        mv = mat_vec(w, row_dim, v.clone())  # M v, its graph kept: sigma = N(M v) . M v
        normalize_into_(mv.detach(), u, self.eps)
        return torch.dot(u.clone(), mv)

    def _denominators(self) -> list[Tensor]:
        """``mean(sigmas of block b) / scale + eps`` for each block, after the step."""
        step = self.takes_step()
        sigmas = [
            self._sigma(i, self._block(block), row_dim, step)
            for i, (block, row_dim) in enumerate(self.terms)
        ]
        self.last_sigmas = tuple(s.detach() for s in sigmas)
        if self.bidirectional and len(self.terms) == self.blocks:  # one tap: sigma_t = sigma
            self.last_sigmas = self.last_sigmas * 2
        # The sigmas of a block averaged and divided by the scale (one product by a Python
        # number), eps keeping an all-zero weight at zero.
        per_block = len(self.terms) // self.blocks
        mean_over_scale = 1.0 / (per_block * self.scale)
        denominators = []
        for b in range(self.blocks):
            total = sum(sigmas[b * per_block : (b + 1) * per_block])
            denominators.append(
                (total if mean_over_scale == 1.0 else total * mean_over_scale) + self.eps
            )
        return denominators

    def forward(self, layer: nn.Module) -> Tensor:
        denominators = self._denominators()
        if self.blocks == 1:
            return self.raw_weight / denominators[0]
        blocks = self.raw_weight.chunk(self.blocks, dim=0)
        return torch.cat([w / d for w, d in zip(blocks, denominators)])

    def coefficient(self, layer: nn.Module) -> Tensor | None:
        return None if self.blocks > 1 else torch.reciprocal(self._denominators()[0])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of BSN on one-tap layers from before it kept one estimate there hold a
        # second pair of vectors (u1, v1) for the transposed matrix: not needed, dropped.
        for name in ("u", "v"):
            state_dict.pop(f"{prefix}{name}{len(self.terms)}", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, scale={self.scale:g}, bidirectional={self.bidirectional}, "
            f"n_power_iterations={self.n_power_iterations}"
            + (f", blocks={self.blocks}" if self.blocks > 1 else "")
        )


class ExactSpectralNorm(_DividedBySigma):
    """``W_eff = scale * W / ||A_W||``: the operator norm of the layer's map on its input shape.

    The buffer ``v`` is a unit vector of one input's shape ``(1, C, *spatial)``; it is
    (re)initialised and warmed up whenever the layer sees a new input shape. Each forward
    uses ``sigma = ||A_W v||`` (differentiable in ``W``); a training forward then moves ``v``
    by ``n_power_iterations`` steps ``v <- N(A^T N(A v))`` (the first reusing ``A v``).
    """

    needs_input = True

    def __init__(
        self,
        weight: nn.Parameter,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        scale: float = 1.0,
        method: str = "sn_exact",
    ) -> None:
        super().__init__(weight, n_power_iterations, eps, scale, method)
        self.register_buffer("v", torch.empty(0, dtype=weight.dtype, device=weight.device))

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
        for _ in range(WARMUP_ITERATIONS):
            self._step(layer, linear_map(layer, weight)(self.v))

    @torch.no_grad()
    def _step(self, layer: nn.Module, image: Tensor) -> None:
        """``v <- N(A^T N(image))`` in place, ``image = A v`` (detached)."""
        u = image / image.norm().clamp_min(self.eps)
        weight = self.raw_weight.detach()
        args = conv_args(layer)
        if args is not None:
            back = conv_adjoint(args, u, self.v, weight)
        else:  # other padding modes: autograd takes the adjoint
            with torch.enable_grad():
                x = self.v.detach().requires_grad_(True)
                (back,) = torch.autograd.grad(linear_map(layer, weight)(x), x, u)
        self.v.copy_(back / back.norm().clamp_min(self.eps))

    def coefficient(self, layer: nn.Module) -> Tensor:
        if self.input_shape is None:
            raise RuntimeError(
                "the exact spectral norm of this layer depends on its input shape, which it has "
                "not seen yet: call the model on a batch first (or use method 'sn')"
            )
        weight = self.raw_weight
        image = linear_map(layer, weight)(self.v.clone().to(weight.dtype))
        sigma = image.norm()
        if self.takes_step():
            self._step(layer, image.detach())
            for _ in range(self.n_power_iterations - 1):
                self._step(layer, linear_map(layer, weight.detach())(self.v))
        self.last_sigmas = (sigma.detach(),)
        # Where the map is zero on this input shape (a transposed conv whose padding crops
        # every tap) there is nothing to normalize: divide by 1, not by eps.
        sigma = torch.where(sigma > self.eps, sigma, torch.ones_like(sigma))
        return self.scale / sigma

    def forward(self, layer: nn.Module) -> Tensor:
        return self.raw_weight * self.coefficient(layer)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The vector's shape is only known once an input was seen: take the saved one's.
        saved = state_dict.get(prefix + "v")
        if saved is not None and saved.shape != self.v.shape:
            self.v = torch.empty_like(saved, device=self.v.device, dtype=self.v.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, input_shape={self.input_shape}"


def spectral_norm(
    module: nn.Module,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    scale: float = 1.0,
    bidirectional: bool = False,
    exact: bool = False,
    *,
    name: str = "",
    method: str = "",
) -> nn.Module:
    """Put spectral normalization (or a variant) on one layer; returns the layer.

    Args:
        module: a Linear, ConvNd, ConvTransposeNd, Embedding or MultiheadAttention layer.
        n_power_iterations: power-iteration steps per training forward.
        eps: added safety in vector normalisation and the division by sigma.
        scale: the constant ``c`` of SSN/BSSN multiplying the normalised weight.
        bidirectional: BSN: divide by the mean of the sigmas of the ``(out, in*k*k)`` and
            ``(in, out*k*k)`` reshapes (the same as SN for Linear and Embedding).
        exact: divide by the operator norm of the layer's map on the input shape it is
            called with (for Linear and Embedding that is SN itself).
        name: the layer's qualified name, used in error messages.
        method: the name ``methods_of`` reports (default: derived from the arguments).
    """
    where = f"layer '{name}'" if name else type(module).__name__
    check_number("n_power_iterations", n_power_iterations, where, integer=True)
    check_number("eps", eps, where)
    scale = float(check_number("scale", scale, where))
    if exact and bidirectional:
        raise ValueError(f"exact and bidirectional spectral norms cannot be combined ({where})")
    weight = check_can_register(module, name)
    if exact and not isinstance(module, nn.Linear | nn.Embedding | nn.MultiheadAttention):
        return register(
            module, ExactSpectralNorm(weight, n_power_iterations, eps, scale, method or "sn_exact")
        )
    if exact:
        method = method or "sn_exact"
    reparam = SpectralNorm(
        weight,
        output_dim(module),
        n_power_iterations,
        eps,
        scale,
        bidirectional,
        row_blocks(module),
        method,
    )
    return register(module, reparam)
