"""``results.json`` and ``report.md`` of a study, with its figures.

``results.json`` holds one record per run: ``method``, ``group``, ``seed``, ``scale``, the
hyper-parameters, ``status`` (finished / diverged / failed), final ``metrics`` under the
names of ``normlab.metrics``, and ``wall_time``. ``report.md`` gives, per group, the mean,
standard deviation and 95% bootstrap percentile interval of each metric over the runs that
finished (``normlab.study.stats``; it stays inside the metric's range) with their number,
the number that diverged or failed, a sentence when coverage and quality rank the groups
differently, the feature space and scale of FID/KID, the figures, and the command that
reproduces it all.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from normlab.study import plots
from normlab.study.convergence import runs_section
from normlab.study.paired import paired_section
from normlab.study.published import published_section
from normlab.study.scale_plot import plot_scale_sweep
from normlab.study.stats import summarize

#: Display order of the metrics, with the better direction.
METRIC_DIRECTIONS: dict[str, str] = {
    "modes_covered": "higher",
    "high_quality_frac": "higher",
    "reverse_kl": "lower",
    "kl": "lower",
    "fid": "lower",
    "kid": "lower",
    "precision": "higher",
    "recall": "higher",
    "density": "higher",
    "coverage": "higher",
    "classifier_accuracy": "higher",
}

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def write_results(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``results.json`` atomically (a study can be interrupted at any time)."""
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1, default=str))
    tmp.replace(path)
    return path


def group_records(records: list[dict[str, Any]]) -> OrderedDict[str, list[dict[str, Any]]]:
    """Records by group label, in the order the groups first appear."""
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for rec in records:
        groups.setdefault(rec["group"], []).append(rec)
    return groups


def metric_names(records: list[dict[str, Any]]) -> list[str]:
    """The metrics present in any record, known ones first in display order."""
    seen = {k for r in records for k in r.get("metrics", {})}
    known = [m for m in METRIC_DIRECTIONS if m in seen]
    return known + sorted(seen - set(known))


def summary_table(records: list[dict[str, Any]]) -> str:
    """A markdown table: one row per group, ``mean ± std [95% CI]`` per metric."""
    groups = group_records(records)
    metrics = metric_names(records)
    arrows = {"higher": " ↑", "lower": " ↓"}
    head = ["group", "runs", "diverged", "failed"] + [
        m + arrows.get(METRIC_DIRECTIONS.get(m, ""), "") for m in metrics
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, recs in groups.items():
        ok = [r for r in recs if r["status"] == "finished"]
        cells = [
            label,
            str(len(recs)),
            str(sum(r["status"] == "diverged" for r in recs)),
            str(sum(r["status"] == "failed" for r in recs)),
        ]
        for m in metrics:
            s = summarize([r["metrics"].get(m) for r in ok])
            if s is None:
                cells.append("-")
            elif s.n == 1:
                cells.append(f"{s.mean:.3g} (1 run)")
            else:
                cells.append(f"{s.mean:.3g} ± {s.std:.2g} [{s.low:.3g}, {s.high:.3g}] n={s.n}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_table(records: list[dict[str, Any]]) -> str:
    """A plain-text version of the summary for the terminal: mean ± std per metric."""
    groups = group_records(records)
    metrics = metric_names(records)
    width = max(8, *(len(g) for g in groups))
    head = f"{'group':{width}s} {'runs':>4s} {'div':>3s} " + " ".join(f"{m:>22s}" for m in metrics)
    lines = [head, "-" * len(head)]
    for label, recs in groups.items():
        ok = [r for r in recs if r["status"] == "finished"]
        cells = []
        for m in metrics:
            s = summarize([r["metrics"].get(m) for r in ok])
            cells.append(
                "-"
                if s is None
                else (f"{s.mean:.3g} n=1" if s.n == 1 else f"{s.mean:.3g} ± {s.std:.2g} n={s.n}")
            )
        bad = sum(r["status"] != "finished" for r in recs)
        lines.append(
            f"{label:{width}s} {len(recs):4d} {bad:3d} " + " ".join(f"{c:>22s}" for c in cells)
        )
    lines += [line for line in (tradeoff_note(records), image_metric_line(records)) if line]
    return "\n".join(lines)


def write_report(
    records: list[dict[str, Any]],
    out_dir: Path,
    *,
    command: str,
    notes: list[str] | None = None,
    sections: list[str] | None = None,
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the report's path.

    ``sections``: further markdown sections (each starting with its ``##`` heading), placed
    after the notes and before the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_records(records)
    metrics = metric_names(records)
    figures = [
        ("Samples (first seed of each group)", plots.plot_samples(groups, out_dir)),
        ("Final metrics over seeds", plots.plot_final_metrics(groups, metrics, out_dir)),
        ("Metrics over training", plots.plot_metric_curves(groups, metrics, out_dir)),
        ("Discriminator input-gradient norms", plots.plot_input_gradients(groups, out_dir)),
        ("Discriminator layer sigmas", plots.plot_layer_sigmas(groups, out_dir)),
        ("Metrics against the scale c", plot_scale_sweep(records, metrics, out_dir)),
    ]
    first = records[0]["config"] if records else {}
    lines = [
        f"# normlab comparison: {first.get('data', '?')}",
        "",
        f"{len(records)} runs in {len(groups)} groups. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Results",
        "",
        "Mean ± standard deviation over the n runs that finished, with the 95% bootstrap "
        "percentile interval of the mean in brackets (exact over every resample for n <= 8; it "
        "stays within the values seen, hence within the metric's range, and with few runs it is "
        "narrow: read it with n). ↑/↓: the better direction. Diverged runs are counted, not "
        "averaged.",
        "",
        summary_table(records),
        "",
        *published_section(records),
        *paired_section(records, metrics),
        *runs_section(records, metrics),
    ]
    lines += [line + "\n" for line in (tradeoff_note(records), image_metric_line(records)) if line]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines += ["### Failed runs", ""]
        lines += [f"- {r['group']} seed {r['seed']}: {r.get('error', '?')}" for r in failed]
        lines.append("")
    diverged = [r for r in records if r["status"] == "diverged"]
    if diverged:
        lines += ["### Diverged runs", ""]
        for r in diverged:
            d = r.get("divergence") or {}
            lines.append(
                f"- {r['group']} seed {r['seed']}: step {d.get('step')}, {d.get('quantity')}"
                f" of {d.get('layer') or 'the model'} = {d.get('value')}"
            )
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for section in sections or []:
        lines += [section, ""]
    lines += ["## Figures", ""]
    for title, path in figures:
        if path is not None:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += [
        "## Settings",
        "",
        "```json",
        json.dumps(
            {k: v for k, v in first.items() if k not in ("method", "seed", "scale")}, indent=1
        ),
        "```",
        "",
    ]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


# -- notes under the tables: coverage against quality, FID/KID's feature space ----------------
#: (coverage metric, quality metric) pairs: a collapsed generator scores well on the second.
TRADEOFF_PAIRS = (("modes_covered", "high_quality_frac"), ("recall", "precision"))


def _group_means(records: list[dict[str, Any]], metric: str) -> dict[str, float]:
    means = {}
    for label, recs in group_records(records).items():
        s = summarize([r["metrics"].get(metric) for r in recs if r["status"] == "finished"])
        if s is not None:
            means[label] = s.mean
    return means


def tradeoff_note(records: list[dict[str, Any]]) -> str:
    """A sentence when the group best on coverage is not the one best on quality (else "")."""
    for cover, quality in TRADEOFF_PAIRS:
        c, q = _group_means(records, cover), _group_means(records, quality)
        both = [g for g in c if g in q]
        if len(both) < 2:
            continue
        best_c = max(both, key=lambda g: c[g])
        best_q = max(both, key=lambda g: q[g])
        if c[best_q] >= c[best_c]:  # the best on quality also covers the most: no conflict
            continue
        return (
            f"Coverage and quality disagree: {best_q} has the highest {quality} "
            f"({q[best_q]:.3g}) but covers less ({cover} {c[best_q]:.3g}) than {best_c} "
            f"({c[best_c]:.3g}, {quality} {q[best_c]:.3g}). A generator that collapses onto a "
            f"few modes puts its samples there accurately, so {quality} rewards it; judge the "
            f"groups on {cover} and {quality} together."
        )
    return ""


def image_metric_line(records: list[dict[str, Any]]) -> str:
    """FID/KID's feature space and scale as the runs' metrics.json state them (else "")."""
    from normlab.gan.evaluate import image_metric_note

    if not any(k in r.get("metrics", {}) for r in records for k in ("fid", "kid")):
        return ""
    for r in records:
        try:
            stored = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        except (OSError, ValueError, KeyError):
            continue
        note = image_metric_note(stored.get("metric_info") or {})
        if note:
            return note[0].upper() + note[1:] + "."
    return "fid and kid: feature space unknown (runs from before metric_info was recorded)."
