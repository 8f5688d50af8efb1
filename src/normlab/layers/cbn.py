"""Cross-Iteration Batch Normalization (Yao et al., CVPR 2021; ``Howal/Cross-iterationBatchNorm``).

With small batches the statistics of one batch are noisy. CBN averages them over the last ``k``
iterations. The statistics of an earlier iteration were computed with earlier weights
``theta_{t-tau}`` of the conv that feeds the layer, so each is first corrected to the current
weights ``theta_t`` by a first-order Taylor step::

    mu_{t-tau}(theta_t) ~ mu_{t-tau} + dmu/dtheta . (theta_t - theta_{t-tau})
    nu_{t-tau}(theta_t) ~ nu_{t-tau} + dnu/dtheta . (theta_t - theta_{t-tau})      (nu = E[x^2])

and then ``mu = mean_tau mu_{t-tau}(theta_t)``, ``sigma^2 = mean_tau nu_{t-tau}(theta_t) - mu^2``
over the iterations whose compensated variance ``nu - mu^2`` is non-negative (the others are
masked out, as in the official code). The correction only involves the conv right before the layer
(the paper's "only the preceding layer" approximation).

The gradients are computed in closed form from the conv's input ``x`` and output ``y``, per output
channel ``c`` (with ``P`` the im2col patches of ``x`` and ``M = N * H_out * W_out``)::

    dmu_c/dW_c = mean_p P_p                (the same for every channel of a group)
    dnu_c/dW_c = 2/M * sum_p y_{c,p} P_p   (= 2/M * the conv's weight-gradient for grad_output = y)
    dmu_c/db_c = 1,  dnu_c/db_c = 2 mu_c    (when the conv has a bias)

using :func:`torch.nn.grad.conv2d_weight` (the conv's own backward kernel), so the cost is about
that of one extra weight-gradient of the conv per training step, on CPU or GPU. ``mu`` is linear
in the weights, so its compensation is exact; ``nu`` is quadratic, so the error of its
compensation is of second order in the weight change.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

__all__ = ["CrossIterationBatchNorm2d"]


class _Past:
    """The statistics of one earlier iteration, with what is needed to compensate them."""

    __slots__ = ("bias", "dmu", "dnu", "mu", "nu", "weight")

    def __init__(
        self,
        mu: Tensor,
        nu: Tensor,
        dmu: Tensor | None,
        dnu: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> None:
        self.mu, self.nu, self.dmu, self.dnu = mu, nu, dmu, dnu
        self.weight, self.bias = weight, bias

    def to(self, device: torch.device, dtype: torch.dtype) -> _Past:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return _Past(*(mv(getattr(self, k)) for k in ("mu", "nu", "dmu", "dnu", "weight", "bias")))


class CrossIterationBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are averaged over the last ``window`` iterations.

    Build it from the conv it follows, so that it can read that conv's weights itself::

        conv = nn.Conv2d(16, 32, 3, padding=1)
        bn = nl.CrossIterationBatchNorm2d.after(conv, window=4, burnin=500)
        y = bn(conv(x))

    It is an ``nn.BatchNorm2d`` (same parameters and buffers: gamma 1 and beta 0 at init, the same
    ``state_dict``), and behaves exactly as one when there are no past iterations: during the first
    ``burnin`` training steps, with ``window=1``, and at the first step after burn-in when nothing
    was recorded yet. Eval mode normalises with the running statistics, as ``BatchNorm2d``.

    Arguments beyond ``BatchNorm2d``'s: ``window`` (``k``, iterations averaged, the current one
    included; 1 = plain BN), ``burnin`` (training steps of plain BN before the window is used; the
    paper uses several epochs, since the Taylor step is only good once the weights change slowly),
    ``rho`` (multiplier of the Taylor correction; 0 = average the raw past statistics without
    compensation, the paper's "naive" baseline, which needs no conv).

    Details and choices, where the official code (CUDA-only, weight passed by hand) differs:

    - The conv is held by a plain (unregistered) reference, so it is neither a second submodule
      nor in ``state_dict``; a forward hook on the conv captures its input during training. Deep
      copies (and pickles) of a model that contains both map the reference onto the copied conv.
      Past statistics are not part of ``state_dict`` (the window refills after loading; burn-in
      resumes from ``num_batches_tracked``). ``reset_window()`` clears them.
    - The statistics of the current batch keep their gradient, as in BN; compensated past
      statistics are constants (no gradient flows into the old iterations).
    - The conv's bias, if any, is compensated as well (first order, as the weight).
    - ``running_mean``/``running_var`` are updated with the *window* statistics (the unbiased
      variance uses the element count of the window), where the official code uses the current
      batch only. With one iteration this is exactly ``BatchNorm2d``'s update.
    - Do not pass the model to ``nn.SyncBatchNorm.convert_sync_batchnorm``: it would replace this
      layer (an ``nn.BatchNorm2d`` subclass) by a plain ``SyncBatchNorm``.

    DDP: statistics are per rank. Each rank keeps its own window of its own local batches; the
    weights (and so the compensation) are identical across ranks because DDP keeps them in sync, and
    ``running_*`` buffers are broadcast from rank 0 as for any BN. The effective batch is
    ``window * local_batch``. There is no SyncBatchNorm-style all-reduce of the statistics across
    ranks (the paper's comparison is exactly against that, CBN being the cheap alternative to it);
    combine with cross-rank sync yourself only if you need both.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        window: int = 4,
        burnin: int = 0,
        rho: float = 1.0,
        conv: nn.Conv2d | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if burnin < 0:
            raise ValueError(f"burnin must be >= 0, got {burnin}")
        if conv is not None:
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"CBN follows an nn.Conv2d, got {type(conv).__name__}")
            if conv.out_channels != num_features:
                raise ValueError(
                    f"conv has {conv.out_channels} output channels, the layer {num_features}"
                )
        elif window > 1 and rho != 0:
            raise ValueError(
                "Taylor compensation needs the preceding conv: build the layer with "
                "CrossIterationBatchNorm2d.after(conv, ...), or use rho=0"
            )
        self.window = int(window)
        self.burnin = int(burnin)
        self.rho = float(rho)
        self._steps = 0  # training forwards seen (a python int: num_batches_tracked may be off)
        self._past: list[_Past] = []
        self._conv_input: Tensor | None = None
        # A tuple is not an nn.Module: the conv is not registered a second time.
        self._conv_ref: tuple[nn.Conv2d, ...] = ()
        if conv is not None:
            self._conv_ref = (conv,)
            conv.register_forward_hook(self._capture_conv_input)

    @classmethod
    def after(
        cls,
        conv: nn.Conv2d,
        window: int = 4,
        burnin: int = 0,
        rho: float = 1.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> CrossIterationBatchNorm2d:
        """The CBN layer for the output of ``conv`` (same device and dtype as its weight)."""
        w = conv.weight
        return cls(
            conv.out_channels,
            eps,
            momentum,
            affine,
            track_running_stats,
            window=window,
            burnin=burnin,
            rho=rho,
            conv=conv,
            device=w.device,
            dtype=w.dtype,
        )

    # ------------------------------------------------------------------ helpers
    @property
    def conv(self) -> nn.Conv2d | None:
        """The conv whose output this layer normalises (``None`` if built without one)."""
        return self._conv_ref[0] if self._conv_ref else None

    def extra_repr(self) -> str:
        extra = f", window={self.window}, burnin={self.burnin}, rho={self.rho}"
        return super().extra_repr() + extra

    def reset_window(self) -> None:
        """Forget the statistics of past iterations (the next step is plain BN)."""
        self._past = []
        self._conv_input = None

    def _recording(self) -> bool:
        # Record from the last `window - 1` burn-in steps on, so the window is full at the end.
        return self.window > 1 and self._steps >= self.burnin - (self.window - 1)

    def _capture_conv_input(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.training and self.rho != 0 and self._recording():
            self._conv_input = inputs[0].detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key in state_dict:
            # Burn-in resumes where the saved model was; the window itself refills.
            self._steps = int(state_dict[key])
        self.reset_window()

    # ------------------------------------------------------------------ statistics
    def _derivatives(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``dmu/dW`` per group ``(groups, fan)`` and ``dnu/dW`` ``(C, fan)`` at this step."""
        conv = self.conv
        x = self._conv_input
        if conv is None or x is None:
            raise RuntimeError(
                "CrossIterationBatchNorm2d: the conv it was built after did not run in this "
                "forward; CBN must directly follow that conv"
            )
        self._conv_input = None
        weight = conv.weight.detach()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
            padding: Any = 0
        else:
            padding = conv.padding
        y = y.detach()
        n_elem = y.shape[0] * y.shape[2] * y.shape[3]
        g = conv.groups
        kw = dict(stride=conv.stride, padding=padding, dilation=conv.dilation, groups=g)
        ones = y.new_ones(y.shape[0], g, y.shape[2], y.shape[3])
        dmu = conv2d_weight(x, (g, *weight.shape[1:]), ones, **kw) / n_elem
        dnu = conv2d_weight(x, weight.shape, y, **kw) * (2.0 / n_elem)
        return dmu.flatten(1), dnu.flatten(1)

    def _compensated(
        self, past: _Past, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if self.rho == 0 or past.dmu is None:
            return past.mu, past.nu
        delta = (weight - past.weight).flatten(1)  # (C, fan)
        per_group = self.num_features // past.dmu.shape[0]
        dmu = past.dmu.repeat_interleave(per_group, dim=0) if past.dmu.shape[0] > 1 else past.dmu
        mu = past.mu + self.rho * (dmu * delta).sum(1)
        nu = past.nu + self.rho * (past.dnu * delta).sum(1)
        if bias is not None and past.bias is not None:
            db = bias - past.bias
            mu = mu + self.rho * db
            nu = nu + self.rho * 2.0 * past.mu * db
        return mu, nu

    def compensated_statistics(self) -> list[tuple[Tensor, Tensor]]:
        """``(mu, E[x^2])`` of each stored past iteration, compensated to the conv's weights now.

        Most recent first. For inspection and tests; ``forward`` uses the same computation.
        """
        conv = self.conv
        weight = conv.weight.detach() if conv is not None else None
        bias = conv.bias.detach() if conv is not None and conv.bias is not None else None
        return [self._compensated(p, weight, bias) for p in self._past]

    # ------------------------------------------------------------------ forward
    def _momentum_factor(self) -> float:
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            self._conv_input = None
            return super().forward(input)

        step = self._steps
        record = self._recording()  # the same test as the conv's hook (before the increment)
        self._steps += 1
        use_window = self.window > 1 and step >= self.burnin and len(self._past) > 0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)

        if not use_window:
            # Exactly BatchNorm2d (the running-stats update included).
            factor = self._momentum_factor() if self.track_running_stats else 0.0
            out = F.batch_norm(
                input,
                self.running_mean if self.track_running_stats else None,
                self.running_var if self.track_running_stats else None,
                self.weight,
                self.bias,
                True,
                factor,
                self.eps,
            )
            mu_cur = nu_cur = None
        else:
            dims = (0, 2, 3)
            mu_cur = input.mean(dims)
            nu_cur = input.square().mean(dims)
            conv = self.conv
            weight = conv.weight.detach() if conv is not None else None
            bias = conv.bias.detach() if conv is not None and conv.bias is not None else None
            dev, dt = input.device, input.dtype
            mus, nus = [mu_cur], [nu_cur]
            for i, p in enumerate(self._past):
                if p.mu.device != dev or p.mu.dtype != dt:
                    p = self._past[i] = p.to(dev, dt)
                mu_p, nu_p = self._compensated(p, weight, bias)
                mus.append(mu_p)
                nus.append(nu_p)
            mu_all = torch.stack(mus)  # (k, C)
            nu_all = torch.stack(nus)
            valid = (nu_all - mu_all.square()).detach() >= 0
            valid[0] = True  # the current batch always counts
            vf = valid.to(dt)
            count = vf.sum(0)
            mu = (mu_all * vf).sum(0) / count
            var = ((nu_all * vf).sum(0) / count - mu.square()).clamp_min(0.0)
            out = (input - mu[None, :, None, None]) * torch.rsqrt(var + self.eps)[
                None, :, None, None
            ]
            if self.affine:
                out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
            if self.track_running_stats:
                with torch.no_grad():
                    n = count * (input.numel() // input.shape[1])
                    unbiased = var * n / (n - 1).clamp_min(1.0)
                    f = self._momentum_factor()
                    self.running_mean.mul_(1 - f).add_(mu.detach(), alpha=f)
                    self.running_var.mul_(1 - f).add_(unbiased.detach(), alpha=f)

        if record:
            with torch.no_grad():
                if mu_cur is None:
                    mu_cur = input.mean((0, 2, 3))
                    nu_cur = input.square().mean((0, 2, 3))
                conv = self.conv
                if self.rho != 0:
                    dmu, dnu = self._derivatives(input)
                    weight = conv.weight.detach().clone()
                    bias = conv.bias.detach().clone() if conv.bias is not None else None
                else:
                    dmu = dnu = weight = bias = None
                entry = _Past(mu_cur.detach(), nu_cur.detach(), dmu, dnu, weight, bias)
                self._past = [entry, *self._past][: self.window - 1]
        self._conv_input = None
        return out
