"""PacGAN packing (Lin, Khetan, Fanti, Oh 2018): the discriminator judges ``m`` samples at once.

``PackedDiscriminator(D, m)`` wraps a discriminator ``D`` built for inputs with ``m`` times
the channels (an MLP with input ``m * d``, a CNN with ``m * C`` channels). A batch of ``N``
samples ``x_1..x_N`` (``N`` a multiple of ``m``) is cut into ``N / m`` packs of consecutive
samples, each pack concatenated along the feature/channel axis::

    pack_j = concat(x_{jm+1}, ..., x_{jm+m}),     s_j = D(pack_j),     out_i = s_{ceil(i / m)}

so every sample gets its pack's logit. The mean of any per-sample loss over the ``N``
outputs then equals its mean over the ``N / m`` packs (each pack logit appears ``m`` times),
and so does its gradient: the trainer's D and G steps run unchanged, and the trainer's
concatenation ``[real; fake]`` (both multiples of ``m``) never mixes real and fake samples in
one pack. One consequence for instruments: the gradient of ``out.sum()`` w.r.t. a sample is
``m`` times that of its pack's logit (``normlab.diagnostics.input_gradient_norm`` reports
``m * ||d s_j / d x_i||``).

Example::

    >>> from normlab.gan.models import MLPDiscriminator
    >>> D = PackedDiscriminator(MLPDiscriminator(in_dim=2 * 3), pack=3)
    >>> D(torch.randn(12, 2)).shape        # 4 packs of 3, one logit per sample
    torch.Size([12])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pack_samples(x: Tensor, pack: int) -> Tensor:
    """``(N, C, ...) -> (N / pack, pack * C, ...)``: consecutive samples concatenated on axis 1."""
    if x.dim() < 2:
        raise ValueError(
            f"packing needs a batch of samples (N, C, ...), got shape {tuple(x.shape)}"
        )
    n = x.shape[0]
    if n % pack:
        raise ValueError(
            f"a batch of {n} samples cannot be cut into packs of {pack}: use a batch size that "
            f"is a multiple of pack (per process, under torchrun)"
        )
    # (N, C, ...) -> (N/m, m, C, ...) -> (N/m, m*C, ...): pack j holds samples jm..jm+m-1.
    return x.reshape(n // pack, pack * x.shape[1], *x.shape[2:])


class PackedDiscriminator(nn.Module):
    """``D`` judging packs of ``pack`` samples; one logit per input sample (its pack's).

    ``inner`` must take inputs with ``pack`` times the channels of one sample.
    """

    def __init__(self, inner: nn.Module, pack: int) -> None:
        super().__init__()
        if not isinstance(pack, int) or isinstance(pack, bool) or pack < 1:
            raise ValueError(f"pack must be a positive integer, got {pack!r}")
        self.inner = inner
        self.pack = pack

    def forward(self, x: Tensor) -> Tensor:
        if self.pack == 1:
            return self.inner(x)
        scores = self.inner(pack_samples(x, self.pack)).reshape(-1)
        return torch.repeat_interleave(scores, self.pack)

    def extra_repr(self) -> str:
        return f"pack={self.pack}"
