"""Figures of ``normlab diagnose`` (matplotlib, written as PNG files; never shown)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

#: One colour per method, the same in every figure.
COLORS = {
    "none": "#000000",
    "sn": "#1f77b4",
    "sn_exact": "#d62728",
    "bsn": "#2ca02c",
    "ssn": "#17becf",
    "bssn": "#9467bd",
    "eqlr": "#ff7f0e",
    "wn": "#8c564b",
}


def _short(name: str) -> str:
    """``features.4`` -> ``conv2`` style labels for the standard CNN; others as they are."""
    return name.replace("features.", "f").replace("blocks.", "b")


def _layers(result: dict[str, Any]) -> list[str]:
    first = next(iter(result["methods"].values()))
    return list(first["records"][0]["layers"])


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _per_layer(ax: plt.Axes, result: dict, key: str, which: int, log: bool, title: str) -> None:
    names = _layers(result)
    for method, run in result["methods"].items():
        rec = run["records"][which]
        ys = [rec["layers"][n].get(key, math.nan) for n in names]
        ax.plot(range(len(names)), ys, "o-", color=COLORS.get(method), label=method, ms=4)
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=45, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")


def diagnose_figures(result: dict[str, Any], out: Path) -> list[str]:
    """Write the study's figures into ``out``; returns their file names."""
    out = Path(out)
    steps = result["config"]["steps"]
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    _per_layer(axes[0], result, "weight_grad_norm", 0, True, "at initialization (step 0)")
    _per_layer(axes[1], result, "weight_grad_norm", -1, True, f"after {steps} steps")
    axes[0].set_ylabel("||dL_D / dW_eff||  (log)")
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(
        "Per-layer gradient norm of D's loss w.r.t. each layer's effective weight", fontsize=11
    )
    files.append(_save(fig, out / "grad_norms.png"))

    methods = list(result["methods"])
    ncol = min(4, len(methods))
    nrow = math.ceil(len(methods) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.3 * ncol, 2.8 * nrow), sharey=True, squeeze=False
    )
    names = _layers(result)
    cmap = plt.get_cmap("viridis")
    for ax, method in zip(axes.flat, methods):
        recs = result["methods"][method]["records"]
        xs = [r["step"] for r in recs]
        for i, n in enumerate(names):
            ax.plot(
                xs,
                [r["layers"][n]["weight_grad_norm"] for r in recs],
                color=cmap(i / max(1, len(names) - 1)),
                label=_short(n),
                lw=1.2,
            )
        ax.set_yscale("log")
        ax.set_title(method, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("step", fontsize=8)
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("||dL_D / dW_eff||")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle(
        "Gradient norm per layer over training (first layer dark, head yellow)", fontsize=11
    )
    files.append(_save(fig, out / "grad_over_steps.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _per_layer(axes[0], result, "sigma", -1, True, f"sigma of W_eff.reshape(out, -1), step {steps}")
    _per_layer(
        axes[1], result, "op_norm", -1, True, f"exact operator norm (on its input), step {steps}"
    )
    _per_layer(
        axes[2], result, "std_sqrt_fan_in", -1, True, f"std(W_eff) * sqrt(fan_in), step {steps}"
    )
    axes[2].axhline(1.0, color="grey", ls=":", lw=1)
    axes[2].legend(fontsize=8, ncol=2)
    fig.suptitle(
        "Layer scales: what SN controls (left), the true per-layer Lipschitz constant "
        "(middle), LeCun scale = 1 (right)",
        fontsize=11,
    )
    files.append(_save(fig, out / "sigma.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for key, ax, title in (
        ("grad_x_real_mean", axes[0], "real"),
        ("grad_x_fake_mean", axes[1], "fake"),
    ):
        for method, run in result["methods"].items():
            recs = run["records"]
            ax.plot(
                [r["step"] for r in recs],
                [r[key] for r in recs],
                color=COLORS.get(method),
                label=method,
            )
        ax.set_yscale("log")
        ax.set_title(f"mean ||grad_x D(x)|| on {title} batches", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8, ncol=2)
    files.append(_save(fig, out / "input_grad.png"))

    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.3 * ncol, 2.8 * nrow), sharey=True, squeeze=False
    )
    for ax, method in zip(axes.flat, methods):
        recs = result["methods"][method]["records"]
        xs = [r["step"] for r in recs]
        c = COLORS.get(method)
        ax.plot(xs, [r["lipschitz_bound"] for r in recs], color=c, lw=2, label="bound")
        ax.plot(
            xs,
            [max(r["grad_x_real_max"], r["grad_x_fake_max"]) for r in recs],
            color=c,
            ls="--",
            label="measured max",
        )
        ax.plot(xs, [r["grad_x_real_mean"] for r in recs], color=c, ls=":", label="measured mean")
        ax.set_yscale("log")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set_ylabel("||grad_x D(x)||")
    fig.suptitle(
        "Lipschitz bound (product of operator norms x activation constants) vs "
        "measured input-gradient norm",
        fontsize=11,
    )
    files.append(_save(fig, out / "lipschitz.png"))
    return files


def lr_bound_figure(study: dict[str, Any], out: Path) -> str:
    """Final loss of each rate of the sweep (x: rate / estimate), divergences marked."""
    models = study["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, (name, m) in zip(axes.flat, models.items()):
        fs = [s["factor"] for s in m["sweep"]]
        ls = [s["final_loss"] if math.isfinite(s["final_loss"]) else math.nan for s in m["sweep"]]
        div = [s["diverged"] for s in m["sweep"]]
        ax.scatter(
            [f for f, d in zip(fs, div) if not d],
            [v for v, d in zip(ls, div) if not d],
            color="tab:green",
            label="stable",
            zorder=3,
        )
        ax.scatter(
            [f for f, d in zip(fs, div) if d],
            [min(v, 1e3) if math.isfinite(v) else 1e3 for v, d in zip(ls, div) if d],
            color="tab:red",
            marker="x",
            label="diverged",
            zorder=3,
        )
        ax.axvline(1.0, color="k", ls="--", lw=1, label="estimate 2(1+mu)/lambda")
        if math.isfinite(m["threshold"]) and m["threshold"] > 0:
            ax.axvline(m["ratio"], color="tab:red", ls=":", lw=1.5, label="measured threshold")
        if m.get("lr_final"):
            ax.axvline(
                m["lr_final"] / m["lr_estimate"],
                color="tab:blue",
                ls="-.",
                lw=1,
                label="2(1+mu)/lambda after the largest stable run",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate / estimate")
        ax.set_title(
            f"{name}: lambda_max={m['lambda_max']:.3g}, estimate lr={m['lr_estimate']:.3g}\n"
            f"measured threshold {m['threshold']:.3g} = {m['ratio']:.2f} x estimate",
            fontsize=9,
        )
        ax.grid(alpha=0.3, which="both")
    axes.flat[0].set_ylabel(f"loss after {study['steps']} steps")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, Path(out) / "lr_bound.png")
