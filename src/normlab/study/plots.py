"""The figures of a study report, each a PNG in the report folder.

* ``samples.png``: one panel per group, the final samples of its first seed's run;
* ``final_metrics.png``: every seed's final value of each metric, per group (the spread
  over seeds is the result, as Kurach et al. insist, not the best run);
* ``metrics_over_training.png``: each metric over training, mean over seeds, per group;
* ``d_input_gradients.png``: the discriminator's input-gradient norm ``||grad_x D(x)||``
  (mean over the batch, real and fake) over training, log scale;
* ``layer_sigmas.png``: each D layer's effective spectral norm over training, per group.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write ``fig`` as a PNG at ``path``, close it; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return rows


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs of (step, value) curves, on the steps all of them logged."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, value in curve:
            if value is not None and np.isfinite(value):
                by_step[step].append(value)
    steps = sorted(s for s, vs in by_step.items() if len(vs) == len(curves))
    return np.array(steps), np.array([np.mean(by_step[s]) for s in steps])


def _grid(plt, n: int, size: float = 3.2):
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def plot_samples(groups: dict[str, list[dict]], out: Path) -> Path | None:
    """Final sample pictures of each group's first run, side by side."""
    plt = _plt()
    pictures = []
    for label, records in groups.items():
        for rec in records:
            png = Path(rec["run_dir"]) / "samples" / "final.png"
            if png.is_file():
                pictures.append((f"{label} (seed {rec['seed']})", png))
                break
    if not pictures:
        return None
    fig, axes = _grid(plt, len(pictures), size=3.6)
    for ax, (title, png) in zip(axes, pictures):
        ax.imshow(plt.imread(png))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return _save(plt, fig, out / "samples.png")


def plot_final_metrics(groups: dict[str, list[dict]], metrics: list[str], out: Path) -> Path | None:
    """Dots for every seed's final value, a bar for the mean, per group and metric."""
    if not metrics:
        return None
    plt = _plt()
    fig, axes = _grid(plt, len(metrics), size=3.6)
    labels = list(groups)
    for ax, metric in zip(axes, metrics):
        for i, label in enumerate(labels):
            values = [r["metrics"][metric] for r in groups[label] if metric in r.get("metrics", {})]
            diverged = sum(r["status"] != "finished" for r in groups[label])
            if values:
                jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(i + np.asarray(jitter), values, s=14, alpha=0.7, zorder=3)
                ax.hlines(np.mean(values), i - 0.3, i + 0.3, colors="k", zorder=4)
            if diverged:
                ax.annotate(
                    f"{diverged} x",
                    (i, 0),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="bottom",
                    color="red",
                    fontsize=8,
                )
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=9)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Final metrics: every seed (dots), mean (bar); red: runs diverged/failed")
    return _save(plt, fig, out / "final_metrics.png")


def plot_metric_curves(groups: dict[str, list[dict]], metrics: list[str], out: Path) -> Path | None:
    """Each metric over training steps, mean over a group's seeds."""
    plt = _plt()
    histories = {
        label: [_history(Path(r["run_dir"])) for r in records] for label, records in groups.items()
    }
    if not any(h for hs in histories.values() for h in hs) or not metrics:
        return None
    fig, axes = _grid(plt, len(metrics), size=3.6)
    for ax, metric in zip(axes, metrics):
        for label, hs in histories.items():
            curves = [[(h["step"], h.get(metric)) for h in hist] for hist in hs if hist]
            if curves:
                steps, mean = _mean_curve(curves)
                ax.plot(steps, mean, marker=".", label=label)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Metrics over training (mean over seeds)")
    return _save(plt, fig, out / "metrics_over_training.png")


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()).get("history", [])
    except (OSError, json.JSONDecodeError):
        return []


def plot_input_gradients(groups: dict[str, list[dict]], out: Path) -> Path | None:
    """D's mean input-gradient norm on real and fake batches over training (log scale)."""
    plt = _plt()
    logs = {
        label: [_read_jsonl(Path(r["run_dir"]) / "log.jsonl") for r in rs]
        for label, rs in groups.items()
    }
    if not any(rows for runs in logs.values() for rows in runs):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("grad_real_mean", "grad_fake_mean"), ("real", "fake")):
        for label, runs in logs.items():
            curves = [[(r["step"], r.get(key)) for r in rows if key in r] for rows in runs if rows]
            curves = [c for c in curves if c]
            if curves:
                steps, mean = _mean_curve(curves)
                if len(steps):
                    ax.plot(steps, mean, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"||grad_x D(x)||, {title} batch (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    return _save(plt, fig, out / "d_input_gradients.png")


def plot_layer_sigmas(groups: dict[str, list[dict]], out: Path) -> Path | None:
    """Each D layer's effective sigma over training, one panel per group (first seed)."""
    plt = _plt()
    panels = []
    for label, records in groups.items():
        rows = _read_jsonl(Path(records[0]["run_dir"]) / "log.jsonl") if records else []
        rows = [r for r in rows if "layers" in r]
        if rows:
            panels.append((label, rows))
    if not panels:
        return None
    fig, axes = _grid(plt, len(panels), size=3.6)
    for ax, (label, rows) in zip(axes, panels):
        for layer in rows[0]["layers"]:
            steps = [r["step"] for r in rows if layer in r["layers"]]
            sig = [r["layers"][layer].get("sigma") for r in rows if layer in r["layers"]]
            ax.plot(steps, sig, label=layer)
        ax.set_yscale("log")
        ax.set_title(f"{label}: layer sigma")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    return _save(plt, fig, out / "layer_sigmas.png")
