"""The per-layer scale table of ``normlab inspect`` (and ``make`` demo's first part).

For each method, a fresh standard CNN discriminator (same seed) is reparameterized, the
power iteration is run to convergence on one input, and each layer's effective weight
is summarised by

* ``sigma``: the largest singular value of its ``(out, -1)`` reshape (SVD), and
* ``std*sqrt(fan_in)``: 1 at LeCun's initialisation (variance ``1/fan_in``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from normlab.gan.models import StandardCNNDiscriminator
from normlab.reparam import apply, fan_in, output_dim
from normlab.reparam._layers import as_matrix

#: Training-mode forwards run to converge the power vectors before reading the weights.
CONVERGE_STEPS = 30


def layer_scales(model: nn.Module) -> list[tuple[str, float, float]]:
    """``(name, sigma, std * sqrt(fan_in))`` of every Linear/Conv layer's effective weight."""
    rows = []
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            w = layer.weight.detach()
            sigma = torch.linalg.matrix_norm(as_matrix(w, output_dim(layer)).double(), ord=2)
            rows.append((name, float(sigma), float(w.std()) * math.sqrt(fan_in(layer))))
    return rows


def layer_scale_table(
    methods: list[str], *, resolution: int = 32, channels: int = 3, width: int = 64, seed: int = 0
) -> str:
    """A text table: rows are layers, two columns (sigma, std*sqrt(fan_in)) per method."""
    results = {}
    x = torch.randn(
        2, channels, resolution, resolution, generator=torch.Generator().manual_seed(seed)
    )
    for method in methods:
        torch.manual_seed(seed)
        d = apply(StandardCNNDiscriminator(resolution, channels, width), method)
        with torch.no_grad():
            for _ in range(CONVERGE_STEPS):
                d(x)
        d.eval()
        results[method] = layer_scales(d)
    names = [r[0] for r in results[methods[0]]]
    head = f"{'layer':12s}" + "".join(f" | {m:>17s}" for m in methods)
    sub = f"{'':12s}" + "".join(f" | {'sigma':>8s} {'std*vfi':>8s}" for _ in methods)
    lines = [head, sub, "-" * len(head)]
    for i, name in enumerate(names):
        cells = "".join(f" | {results[m][i][1]:8.3f} {results[m][i][2]:8.3f}" for m in methods)
        lines.append(f"{name:12s}{cells}")
    lines.append("")
    lines.append(
        "sigma: largest singular value of the effective weight reshaped (out, -1); "
        "std*vfi: its std x sqrt(fan_in) (1 = LeCun init)."
    )
    return "\n".join(lines)
