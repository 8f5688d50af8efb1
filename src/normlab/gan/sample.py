"""Sample pictures: a scatter of 2-D samples over the mixture's modes, or a grid of images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from normlab.data import Data, MixtureSpec

#: Each image cell of a grid is at least this many pixels wide (small images are enlarged by
#: an integer factor, nearest neighbour: an 8x8 digit becomes 64x64, a 64-image grid ~580 px).
MIN_CELL_PIXELS = 64
#: Seed offset of the latents drawn for sample pictures.
SAMPLE_SEED_OFFSET = 104729


def scatter_figure(samples: Tensor, spec: MixtureSpec, title: str = ""):
    """``(fig, ax)``: ``samples`` ``(N, 2)`` (blue) drawn *above* the modes and their 3-std
    circles (red), so that a generator collapsed onto a mode still shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from normlab.data.mixtures import QUALITY_STDS

    x = samples.detach().cpu().numpy()
    means = np.asarray(spec.means)
    span = float(np.abs(means).max()) + 0.5
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    for m in means:
        ax.add_patch(
            Circle(m, QUALITY_STDS * spec.std, fill=False, color="tab:red", lw=0.8, zorder=1)
        )
    ax.scatter(
        means[:, 0], means[:, 1], marker="+", s=20, color="tab:red", lw=0.8, label="modes", zorder=2
    )
    ax.scatter(
        x[:, 0], x[:, 1], s=4, alpha=0.6, color="tab:blue", label="generated", lw=0, zorder=3
    )
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    outside = int((np.abs(x) > span).any(axis=1).sum())
    ax.set_title((title + (f"  ({outside} outside view)" if outside else "")).strip(), fontsize=8)
    ax.legend(loc="upper right", fontsize=6, markerscale=2)
    fig.tight_layout()
    return fig, ax


def save_scatter(samples: Tensor, spec: MixtureSpec, path: str | Path, title: str = "") -> Path:
    """Write ``scatter_figure(samples, spec, title)`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig, _ = scatter_figure(samples, spec, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` as one PNG grid (small images enlarged)."""
    from PIL import Image

    x = images.detach().cpu().float().clamp(-1, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    pad = 1
    grid = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    arr = ((x + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = arr[i]
    pix = (grid * 255).round().astype(np.uint8)
    img = Image.fromarray(pix[:, :, 0] if c == 1 else pix[:, :, :3])
    factor = max(1, math.ceil(MIN_CELL_PIXELS / max(h, w)))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_samples(samples: Tensor, data: Data, path: str | Path, title: str = "") -> Path:
    """The right picture for ``data``: a scatter for mixtures, an image grid otherwise."""
    if data.kind == "mixture":
        assert data.mixture is not None
        return save_scatter(samples, data.mixture, path, title)
    return save_image_grid(data.as_images(samples), path)


def sample_run(run_dir: str | Path, n: int, out_png: str | Path) -> Path:
    """Draw ``n`` samples from a run's generator (its EMA where kept; latest good checkpoint)
    and write them to ``out_png``; returns the path."""
    from normlab.gan.evaluate import generate
    from normlab.gan.run import generator_for_eval

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cfg, data, G, step = generator_for_eval(run_dir)
    x = generate(G, n, cfg.z_dim, cfg.seed + SAMPLE_SEED_OFFSET, cfg.device)
    return save_samples(x, data, out_png, title=f"{cfg.data} {cfg.method} step {step}")
