"""``Monitor``: per-layer sigmas, weight scales and gradients over training, cheaply.

Usage in any training loop::

    with nl.diagnostics.Monitor(D, every=10, jsonl_path="run/d.jsonl") as mon:
        for step, real in enumerate(loader):
            d_opt.zero_grad()
            loss = d_loss(D, G, real)
            loss.backward()
            mon.record(step, loss_d=loss.item())   # after backward, before step()/zero_grad()
            d_opt.step()

Cost per recorded step (no SVD, no extra forward of the batch): for each layer one
matrix-vector power step on the effective weight (none for SN-family layers, which
already hold their sigmas) and, for convolutions, one step of power iteration for the
operator norm on a single input (one conv and its adjoint on one sample); the effective
weight gradients are accumulated by hooks. All numbers are read back in one transfer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from normlab.diagnostics._common import (
    activation_constant,
    effective_weight,
    is_conv,
    layer_label,
    spectral_sigmas,
    weighted_layers,
)
from normlab.reparam import fan_in, output_dim, reparametrization_of
from normlab.reparam._layers import as_matrix, input_shape_of, linear_map

#: Power steps taken when a layer's vector is first made (then one per record).
WARMUP_STEPS = 10


class _LayerState:
    """What the Monitor keeps per layer: power vectors, the input shape, gradient sums."""

    __slots__ = ("acc", "fresh", "input_shape", "op_v", "pending", "raw", "u")

    def __init__(self) -> None:
        self.u: Tensor | None = None  # left vector of the (out, -1) reshape
        self.op_v: Tensor | None = None  # input-shaped vector for the conv operator norm
        self.input_shape: tuple[int, ...] | None = None
        self.acc: Tensor | None = None  # effective-weight gradient since the last zero_grad
        self.pending: Tensor | None = None  # this backward's contributions so far
        self.fresh = False
        self.raw: Tensor | None = None  # the raw parameter whose .grad tells a new backward


class Monitor:
    """Records per-layer quantities of ``model`` every ``every`` steps.

    Each record is ``{"step", **scalars, "layers": {name: {...}}, "lipschitz_bound",
    "activation_constant"}`` with per layer:

    * ``sigma``: largest singular value of the effective weight reshaped ``(out, -1)``
      (SN-family layers: from their own power iteration, ``scale`` up to its error;
      others: a power vector held here, one step per record);
    * ``sigma_t`` (BSN/BSSN only): the same for the transposed ``(in, out*k*k)`` reshape;
    * ``op_norm``: for convolutions the operator norm on the last input shape seen
      (power iteration, one step per record); ``sigma`` for Linear/Embedding;
    * ``weight_grad_norm``: norm of the gradient w.r.t. the *effective* weight, summed over
      the forwards since the gradients were last zeroed (it follows ``.grad``: a backward
      that finds the raw parameter's ``.grad`` set to None, as ``zero_grad()`` leaves it,
      starts a new sum); a plain layer's weight is its own raw tensor: ``||weight.grad||``;
    * ``std_sqrt_fan_in``: effective weight std x sqrt(fan_in) (1 at LeCun's init scale).

    ``lipschitz_bound`` is the product of the ``op_norm`` s times the activations'
    constants: an upper bound on ``||grad_x model(x)||`` for a chain of layers.
    Records go to ``records`` (unless ``keep_records=False``), to ``jsonl_path`` (one JSON
    line each, flushed) and to TensorBoard scalars ``f"{prefix}/{quantity}/{layer}"`` and
    ``f"{prefix}/{name}"`` for the model-level numbers. The Monitor never draws from the
    global random generator (its power vectors start from a private one). Hooks and files
    are released by ``close()`` (or leaving the ``with`` block).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        *,
        prefix: str = "D",
        jsonl_path: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        keep_records: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.model = model
        self.every = every
        self.prefix = prefix
        self.keep_records = keep_records
        self.records: list[dict] = []
        self._layers = weighted_layers(model)
        if not self._layers:
            raise ValueError(f"{type(model).__name__} has no weighted layer to monitor")
        self._state = {name: _LayerState() for name, _ in self._layers}
        for name, layer in self._layers:
            reparam = reparametrization_of(layer)
            if reparam is not None:
                raws = [p for p in reparam.parameters(recurse=False) if p.requires_grad]
                self._state[name].raw = raws[0] if raws else None
        self._handles: list[RemovableHandle] = []
        self._attach()
        self._jsonl = None
        if jsonl_path is not None:
            path = Path(jsonl_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))
        self._closed = False
        self._paused = False
        # Power vectors start from this generator, so the global RNG is never drawn from.
        self._gen = torch.Generator().manual_seed(0)

    # -- hooks ---------------------------------------------------------------------------
    def _attach(self) -> None:
        """Register the hooks: input shapes of convolutions (for their operator norms) and
        the effective-weight gradients of reparametrized layers."""
        for name, layer in self._layers:
            st = self._state[name]
            if is_conv(layer):
                self._handles.append(layer.register_forward_pre_hook(self._shape_hook(st)))
            reparam = reparametrization_of(layer)
            if reparam is not None:
                self._handles.append(reparam.add_weight_grad_hook(self._grad_hook(st)))
                if st.raw is not None:
                    self._handles.append(
                        st.raw.register_post_accumulate_grad_hook(self._accumulated_hook(st))
                    )

    @property
    def paused(self) -> bool:
        """Whether the hooks are off (``pause()``) until ``resume()``."""
        return self._paused

    def pause(self) -> None:
        """Stop observing: remove the hooks until ``resume()``, so that steps which record
        nothing pay nothing (a model call then takes PyTorch's hook-free path).

        A loop that records every ``every`` steps resumes right before the forward and
        backward of a recorded step and pauses after ``record``: the record then holds that
        step's gradients, as an always-on Monitor would after a ``zero_grad``. Gradients
        of backwards run while paused are not in any record.
        """
        if self._closed:
            raise RuntimeError("this Monitor is closed")
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for st in self._state.values():
            st.acc = None
            st.pending = None
        self._paused = True

    def resume(self) -> None:
        """Observe again after ``pause()`` (a no-op when not paused); the gradient sums
        start at the next backward."""
        if self._closed:
            raise RuntimeError("this Monitor is closed")
        if self._paused:
            self._attach()
            self._paused = False

    @staticmethod
    def _shape_hook(st: _LayerState):
        def hook(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                st.input_shape = input_shape_of(mod, args[0])

        return hook

    @staticmethod
    def _grad_hook(st: _LayerState):
        def hook(g: Tensor) -> None:
            g = g.detach()
            if st.pending is None:
                st.fresh = st.raw is None or st.raw.grad is None
                st.pending = g.clone()
            else:
                st.pending.add_(g)

        return hook

    @staticmethod
    def _accumulated_hook(st: _LayerState):
        def hook(p: Tensor) -> None:
            if st.pending is None:
                return
            if st.fresh or st.acc is None:
                st.acc = st.pending
            else:
                st.acc.add_(st.pending)
            st.pending = None

        return hook

    # -- measurements --------------------------------------------------------------------
    def _grad_of(self, layer: nn.Module, st: _LayerState) -> Tensor | None:
        if reparametrization_of(layer) is None:
            w = layer._parameters.get("weight")
            return None if w is None else w.grad
        if st.acc is not None and st.pending is not None:
            return st.acc + st.pending
        return st.acc if st.acc is not None else st.pending

    @torch.no_grad()
    def _sigma(self, st: _LayerState, mat: Tensor) -> Tensor:
        steps = 1
        if st.u is None or st.u.shape[0] != mat.shape[0] or st.u.device != mat.device:
            u0 = torch.randn(mat.shape[0], generator=self._gen).to(mat.device, mat.dtype)
            st.u = F.normalize(u0, dim=0)
            steps = WARMUP_STEPS
        u = st.u.to(mat.dtype)
        for _ in range(steps):
            v = F.normalize(mat.t().mv(u), dim=0, eps=1e-12)
            u = F.normalize(mat.mv(v), dim=0, eps=1e-12)
        st.u = u
        return torch.dot(u, mat.mv(v))

    @torch.no_grad()
    def _op_norm(self, layer: nn.Module, st: _LayerState, w: Tensor) -> Tensor | None:
        if st.input_shape is None:
            return None
        shape = (1, *st.input_shape)
        steps = 1
        if st.op_v is None or tuple(st.op_v.shape) != shape or st.op_v.device != w.device:
            v = torch.randn(shape, generator=self._gen).to(w.device, w.dtype)
            st.op_v = v / v.norm()
            steps = WARMUP_STEPS
        fn = linear_map(layer, w)
        v = st.op_v.to(w.dtype)
        for _ in range(steps):
            with torch.enable_grad():
                x = v.detach().requires_grad_(True)
                y = fn(x)
                (back,) = torch.autograd.grad(y, x, y.detach())
            v = back / back.norm().clamp_min(1e-12)
        st.op_v = v
        return fn(v).norm()

    def record(self, step: int, **scalars: float) -> dict | None:
        """Measure now if ``step % every == 0``; returns the record, else None.

        Call after ``loss.backward()`` and before ``optimizer.step()`` / ``zero_grad()``;
        ``scalars`` (losses, ...) are stored in the record as they are.
        """
        if self._closed:
            raise RuntimeError("this Monitor is closed")
        if step % self.every != 0:
            return None
        names: list[tuple[str, str]] = []
        values: list[Tensor] = []
        ops: list[Tensor] = []
        nan = None
        for name, layer in self._layers:
            st = self._state[name]
            w = effective_weight(layer)
            wf = w.float()
            label = layer_label(name)
            sn = spectral_sigmas(layer)
            if sn is not None:
                sigma = sn[0].reshape(()).float()
            else:
                sigma = self._sigma(st, as_matrix(wf, output_dim(layer)))
            names.append((label, "sigma"))
            values.append(sigma)
            if sn is not None and len(sn) == 2:
                names.append((label, "sigma_t"))
                values.append(sn[1].reshape(()).float())
            op = self._op_norm(layer, st, wf) if is_conv(layer) else sigma
            if op is None:
                nan = nan if nan is not None else torch.tensor(math.nan, device=wf.device)
                op = nan
            names.append((label, "op_norm"))
            values.append(op.reshape(()).float())
            ops.append(op.reshape(()).float())
            g = self._grad_of(layer, st)
            names.append((label, "weight_grad_norm"))
            values.append(g.detach().float().norm() if g is not None else wf.new_zeros(()))
            names.append((label, "std_sqrt_fan_in"))
            values.append(
                wf.std() * math.sqrt(fan_in(layer)) if wf.numel() > 1 else wf.new_zeros(())
            )
            # Start the next sum at the next backward, even if .grad is never set to None.
            st.acc = None
            st.pending = None
        product = torch.stack(ops).prod()
        numbers = torch.stack([*values, product]).tolist()
        act, _ = activation_constant(self.model)
        layers: dict[str, dict[str, float]] = {}
        for (label, key), val in zip(names, numbers[:-1]):
            layers.setdefault(label, {})[key] = val
        rec: dict[str, Any] = {"step": int(step), **scalars, "layers": layers}
        rec["lipschitz_bound"] = numbers[-1] * act
        rec["activation_constant"] = act
        if self.keep_records:
            self.records.append(rec)
        self._write(rec)
        return rec

    def _write(self, rec: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(rec, allow_nan=True) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            step = rec["step"]
            for key, val in rec.items():
                if key in ("step", "layers"):
                    continue
                if isinstance(val, int | float) and not isinstance(val, bool):
                    self._tb.add_scalar(f"{self.prefix}/{key}", val, step)
            for label, qs in rec["layers"].items():
                for q, val in qs.items():
                    self._tb.add_scalar(f"{self.prefix}/{q}/{label}", val, step)

    def close(self) -> None:
        """Remove the hooks and close the files (records stay available)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._closed = True

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
