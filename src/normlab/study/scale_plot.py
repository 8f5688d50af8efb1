"""The scale knob of Lin et al. made visible: every metric against ``c``, one line per method.

For a study that sweeps ``--scale`` over the scaled methods (``ssn``, ``bssn``), each panel
plots one metric's mean over seeds against ``c`` for each method, with the 95% bootstrap
percentile interval of that mean as a band (``normlab.study.stats.summarize``, as in the
report's tables; a single run gives a point without a band).
Methods without a scale (``sn``, ``none``, ...) are drawn as horizontal lines with their own
band across the whole axis, so a reader sees at which ``c`` a scaled method beats plain SN.

    >>> plot_scale_sweep(records, ["modes_covered", "high_quality_frac"], out_dir)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from normlab.study.plots import _grid, _plt, _save
from normlab.study.stats import summarize

SCALE_FIGURE = "scale_sweep.png"


def scale_curves(
    records: list[dict[str, Any]], metric: str
) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{method: [(c, mean, low, high), ...]}`` sorted by ``c``, over finished runs
    (``low``/``high`` nan for a single run)."""
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("scale") is None or r["status"] != "finished":
            continue
        v = r.get("metrics", {}).get(metric)
        if v is not None:
            values[r["method"]][float(r["scale"])].append(v)
    out = {}
    for method, by_c in values.items():
        rows = []
        for c in sorted(by_c):
            s = summarize(by_c[c])
            if s is not None:
                rows.append((c, s.mean, s.low, s.high))
        if rows:
            out[method] = rows
    return out


def is_scale_sweep(records: list[dict[str, Any]]) -> bool:
    """Whether some method was run at two or more scales."""
    scales: dict[str, set[float]] = defaultdict(set)
    for r in records:
        if r.get("scale") is not None:
            scales[r["method"]].add(float(r["scale"]))
    return any(len(s) >= 2 for s in scales.values())


#: (dashes, marker) of the scaled methods' lines, in turn.
LINE_STYLES = (("-", "o"), ("--", "x"), (":", "s"), ("-.", "^"))


def _labels(all_curves: dict[str, dict[str, list]]) -> dict[str, str]:
    """Each method's legend label; ``"ssn (= bssn)"`` when its values equal an earlier
    method's in every panel (as SSN's and BSSN's do on MLPs, whose layers are matrices: both
    read the same sigma)."""
    methods = list(dict.fromkeys(m for curves in all_curves.values() for m in curves))
    labels = {}
    for i, method in enumerate(methods):
        same = [
            other
            for other in methods[:i]
            if all(curves.get(method) == curves.get(other) for curves in all_curves.values())
        ]
        labels[method] = f"{method} (= {same[0]})" if same else method
    return labels


def plot_scale_sweep(records: list[dict[str, Any]], metrics: list[str], out: Path) -> Path | None:
    """``scale_sweep.png`` in ``out`` (None when the study sweeps no scale)."""
    if not metrics or not is_scale_sweep(records):
        return None
    plt = _plt()
    fig, axes = _grid(plt, len(metrics), size=3.8)
    unscaled = sorted({r["method"] for r in records if r.get("scale") is None})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_curves = {metric: scale_curves(records, metric) for metric in metrics}
    labels = _labels(all_curves)
    for ax, metric in zip(axes, metrics):
        curves = all_curves[metric]
        lo_c = min(c for rows in curves.values() for c, *_ in rows) if curves else 0.0
        hi_c = max(c for rows in curves.values() for c, *_ in rows) if curves else 1.0
        k = 0
        for method, rows in curves.items():
            c, mean, low, high = (np.array(col, dtype=float) for col in zip(*rows))
            color = colors[k % len(colors)]
            # Distinct dashes and markers, so that a line drawn over another stays visible.
            dash, marker = LINE_STYLES[k % len(LINE_STYLES)]
            ax.plot(c, mean, linestyle=dash, marker=marker, color=color, label=labels[method])
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                ax.fill_between(c[band], low[band], high[band], color=color, alpha=0.2)
            k += 1
        for method in unscaled:
            s = summarize(
                [
                    r["metrics"].get(metric)
                    for r in records
                    if r["method"] == method and r["status"] == "finished"
                ]
            )
            if s is None:
                continue
            color = colors[k % len(colors)]
            ax.axhline(s.mean, color=color, linestyle="--", label=f"{method} (no c)")
            if np.isfinite(s.low):
                ax.axhspan(s.low, s.high, color=color, alpha=0.1)
            k += 1
        ax.set_xlim(lo_c - 0.05 * (hi_c - lo_c + 1e-9), hi_c + 0.05 * (hi_c - lo_c + 1e-9))
        ax.set_xlabel("scale c")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Metrics against the scale c: mean over seeds, 95% bootstrap interval bands")
    return _save(plt, fig, out / SCALE_FIGURE)
