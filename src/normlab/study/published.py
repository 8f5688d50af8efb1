"""Published results a study is shown beside: PacGAN's Table 1 for the 2-D mixtures.

One ``Benchmark`` per data name (``PUBLISHED``): the source, the budget the authors used, and
their rows under normlab's metric names (``modes_covered``, ``high_quality_frac`` as a
fraction, ``reverse_kl``), each as ``(mean, standard error)`` as the paper reports them
(``/work/shared/benchmarks.md``). They are shown beside a study's own numbers, never used
as expected values.

``published_section(records)`` renders, for a study on a data set with a published table, one
markdown table with the published rows and the study's groups, both as mean ± standard error,
and a line giving each side's budget::

    >>> lines = published_section(records)    # [] for data without a published table
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: ``(mean, standard error)`` of one metric.
Value = tuple[float, float]


@dataclass(frozen=True)
class Benchmark:
    """A published table: where it comes from, the budget behind it, its rows by method."""

    source: str
    budget: str
    rows: dict[str, dict[str, Value]]


_PACGAN = "PacGAN (Lin, Khetan, Fanti, Oh, NeurIPS 2018), Table 1"
_PACGAN_BUDGET = (
    "10 trials per row; G 4 x 400 ReLU + BatchNorm, D 3 maxout layers (200 units, 5 pieces), "
    "non-saturating loss, Adam 1e-4 (beta1 0.8), batch 100 (packs), 1 D step per G step, "
    "400 epochs of 100,000 points = 400,000 steps; metrics on 2,500 samples"
)

#: Published tables by data name.
PUBLISHED: dict[str, Benchmark] = {
    "ring8": Benchmark(
        _PACGAN,
        _PACGAN_BUDGET,
        {
            "GAN": {
                "modes_covered": (6.3, 0.5),
                "high_quality_frac": (0.982, 0.002),
                "reverse_kl": (0.45, 0.09),
            },
            "PacGAN2": {
                "modes_covered": (7.9, 0.1),
                "high_quality_frac": (0.956, 0.020),
                "reverse_kl": (0.07, 0.03),
            },
            "PacGAN3": {
                "modes_covered": (7.8, 0.1),
                "high_quality_frac": (0.977, 0.003),
                "reverse_kl": (0.10, 0.02),
            },
            "PacGAN4": {
                "modes_covered": (7.8, 0.1),
                "high_quality_frac": (0.959, 0.014),
                "reverse_kl": (0.07, 0.02),
            },
        },
    ),
    "grid25": Benchmark(
        _PACGAN,
        _PACGAN_BUDGET,
        {
            "GAN": {
                "modes_covered": (17.3, 0.8),
                "high_quality_frac": (0.948, 0.007),
                "reverse_kl": (0.70, 0.07),
            },
            "PacGAN2": {
                "modes_covered": (23.8, 0.7),
                "high_quality_frac": (0.913, 0.008),
                "reverse_kl": (0.13, 0.04),
            },
            "PacGAN3": {
                "modes_covered": (24.6, 0.4),
                "high_quality_frac": (0.942, 0.004),
                "reverse_kl": (0.06, 0.02),
            },
            "PacGAN4": {
                "modes_covered": (24.8, 0.2),
                "high_quality_frac": (0.936, 0.006),
                "reverse_kl": (0.04, 0.01),
            },
        },
    ),
}


def published_for(data: str | None) -> Benchmark | None:
    """The published table of ``data`` (``"ring8"``, ``"grid25"``), or None."""
    return PUBLISHED.get(data) if data else None


def mean_and_se(values: list[Any]) -> tuple[int, float, float]:
    """``(n, mean, standard error)`` of the finite values (se = sample std / sqrt(n); nan for
    n < 2; mean nan for n = 0)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return 0, float("nan"), float("nan")
    mean = sum(xs) / n
    if n == 1:
        return 1, mean, float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return n, mean, sd / math.sqrt(n)


def study_budget(config: dict[str, Any], seeds: int) -> str:
    """The budget of a study's runs, worded like the published one."""
    c = config

    def num(key: str) -> str:  # a record's config may lack a key: "?" then
        value = c.get(key)
        return f"{value:g}" if isinstance(value, int | float) else "?"

    parts = [
        f"{seeds} seed{'s' if seeds != 1 else ''} per row",
        f"{c.get('steps')} G steps x {c.get('n_dis')} D step(s), batch {c.get('batch_size')}",
        f"loss {c.get('loss')}, Adam lr_d {num('lr_d')} lr_g {num('lr_g')} "
        f"(betas {num('beta1')}, {num('beta2')})",
    ]
    if c.get("pack", 1) > 1:
        parts.append(f"pack {c['pack']}")
    if c.get("ema"):
        parts.append(f"EMA of G {c['ema']:g}")
    parts.append(f"metrics on {c.get('eval_samples')} samples")
    return "; ".join(parts)


def _cell(metric: str, mean: float, se: float) -> str:
    if not math.isfinite(mean):
        return "-"
    scale = 100.0 if metric == "high_quality_frac" else 1.0
    unit = "%" if metric == "high_quality_frac" else ""
    if not math.isfinite(se):
        return f"{mean * scale:.3g}{unit}"
    return f"{mean * scale:.3g}{unit} ± {se * scale:.2g}{unit}"


def published_section(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the published rows beside the study's groups (empty without a table)."""
    if not records:
        return []
    config = records[0].get("config", {})
    bench = published_for(config.get("data"))
    if bench is None:
        return []
    metrics = list(next(iter(bench.rows.values())))
    head = ["source", "method", "runs", *metrics]
    lines = [
        f"## Published results ({config.get('data')})",
        "",
        f"{bench.source} beside this study, both as mean ± standard error over runs "
        "(the paper's ±; the table above gives standard deviations and bootstrap intervals). "
        "High quality in percent.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in bench.rows.items():
        cells = ["published", name, "10"] + [_cell(m, *row[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec["group"], []).append(rec)
    seeds = 0
    for label, recs in groups.items():
        ok = [r for r in recs if r["status"] == "finished"]
        seeds = max(seeds, len(recs))
        cells = ["this study", label, str(len(ok))]
        for m in metrics:
            _, mean, se = mean_and_se([r["metrics"].get(m) for r in ok])
            cells.append(_cell(m, mean, se))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- Published budget: {bench.budget}.",
        f"- This study's budget: {study_budget(config, seeds)}.",
        "",
    ]
    return lines
