"""Has a run converged? Whether its last evaluations agree.

A run's ``metrics.json`` history holds its metrics at every evaluation. For the last
``window`` evaluations ``v_1..v_w`` of a metric, the metric has settled when

    max(v) - min(v) <= rtol * |mean(v)| + atol[metric]

(``RTOL`` = 5% of the level, plus an absolute floor ``ATOL`` for metrics that can sit near
0, of the size of the evaluation noise: a fraction of 2,500 samples has a binomial standard
error up to 0.01). A run has **converged** when every metric it reports has settled; it is
``None`` (unknown) when it has fewer than ``window`` evaluations. ``modes_covered`` is an
integer, so on the ring (8 modes) it must not change at all over the window, and on the
grid (25) it may move by one.

Example::

    >>> values = [(1, 0.5), (2, 0.90), (3, 0.91), (4, 0.9)]
    >>> check([{"step": s, "high_quality_frac": v} for s, v in values])["converged"]
    True
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: Evaluations the check compares.
WINDOW = 3
#: Relative tolerance of a metric's range over the window.
RTOL = 0.05
#: Absolute floor of the tolerance, by metric (0 for metrics not listed).
ATOL: dict[str, float] = {
    "high_quality_frac": 0.02,
    "reverse_kl": 0.05,
    "precision": 0.02,
    "recall": 0.02,
    "density": 0.02,
    "coverage": 0.02,
    "kid": 0.002,
}


def settled(values: list[float], metric: str, rtol: float = RTOL) -> tuple[bool, float, float]:
    """``(settled, range, tolerance)`` of one metric's last values (all must be finite)."""
    if not values or not all(math.isfinite(v) for v in values):
        return False, float("nan"), float("nan")
    spread = max(values) - min(values)
    tol = rtol * abs(sum(values) / len(values)) + ATOL.get(metric, 0.0)
    return spread <= tol, spread, tol


def check(
    history: list[dict[str, Any]], *, window: int = WINDOW, rtol: float = RTOL
) -> dict[str, Any]:
    """``{"converged": True | False | None, "steps": [steps of the window], "metrics": {name:
    {"range", "tolerance", "settled"}}}`` of an evaluation history (``metrics.json``)."""
    if window < 2:
        raise ValueError(f"window must be at least 2 evaluations, got {window}")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    last = history[-window:]
    if len(last) < window:
        return {"converged": None, "steps": [h.get("step") for h in last], "metrics": {}}
    names = [k for k in last[-1] if k != "step" and isinstance(last[-1][k], int | float)]
    detail = {}
    for name in names:
        values = [h.get(name) for h in last]
        values = [float(v) if isinstance(v, int | float) else float("nan") for v in values]
        ok, spread, tol = settled(values, name, rtol)
        detail[name] = {"range": spread, "tolerance": tol, "settled": ok}
    converged = bool(detail) and all(d["settled"] for d in detail.values())
    return {"converged": converged, "steps": [h.get("step") for h in last], "metrics": detail}


def check_run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``check`` of a run folder's ``metrics.json`` history (unknown when there is none)."""
    try:
        history = json.loads((Path(run_dir) / "metrics.json").read_text()).get("history", [])
    except (OSError, json.JSONDecodeError):
        history = []
    return check(history, **kwargs)


def label(converged: bool | None) -> str:
    """``yes`` / ``no`` / ``?`` (too few evaluations) for tables."""
    return "?" if converged is None else ("yes" if converged else "no")


def runs_section(records: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """Markdown lines: one row per run with its status, ``converged`` and final metrics."""
    if not records:
        return []
    head = ["group", "seed", "status", "converged", "window (steps)", *metrics]
    lines = [
        "## Runs",
        "",
        f"*converged*: each metric's range over the last {WINDOW} evaluations is within "
        f"{RTOL:.0%} of its level plus a noise floor "
        f"({', '.join(f'{k} {v:g}' for k, v in ATOL.items() if k in metrics) or 'none'}); "
        "`?`: fewer evaluations than that.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in records:
        conv = r.get("convergence") or {}
        steps = conv.get("steps") or []
        window = f"{steps[0]}-{steps[-1]}" if steps else "-"
        cells = [r["group"], str(r["seed"]), r["status"], label(r.get("converged")), window]
        for m in metrics:
            v = r.get("metrics", {}).get(m)
            cells.append("-" if v is None else f"{v:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    n_conv = sum(r.get("converged") is True for r in records)
    lines += ["", f"{n_conv} of {len(records)} runs converged.", ""]
    return lines
