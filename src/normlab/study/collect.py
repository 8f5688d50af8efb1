"""``normlab compare --collect``: results.json and report.md from whatever runs have ended.

A study on a cluster finishes run by run over days; collecting reads each run folder of the
grid and writes the report of the runs that ended (finished or diverged), with the runs a
launcher gave up on (``DIR/launcher.json``: failed after its retries) counted as failed and
the others listed as not finished yet. Nothing is trained or submitted.

Example::

    >>> records, missing = collect_study(base, ["sn"], [0, 1, 2], "runs/c10")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normlab.gan.config import TrainConfig
from normlab.study.compare import _record, report_notes
from normlab.study.grid import RunSpec, build_grid
from normlab.study.launchers import STATE_FILE
from normlab.study.report import write_report, write_results
from normlab.study.runner import finished_result


def _launcher_entries(out: Path) -> dict[str, dict[str, Any]]:
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("runs", {})
    except (OSError, json.JSONDecodeError):
        return {}


def collect_study(
    base: TrainConfig,
    methods: list[str],
    seeds: list[int],
    out_dir: str | Path,
    *,
    scales: list[float] | None = None,
    command: str = "normlab compare --collect",
) -> tuple[list[dict[str, Any]], list[RunSpec]]:
    """Write ``results.json`` and ``report.md`` of the runs that ended; returns ``(records,
    the specs of the runs not finished yet)``. Raises ``FileNotFoundError`` when no run of
    the grid has ended (a report of nothing would overwrite a useful one)."""
    out = Path(out_dir)
    runs = build_grid(base, methods, seeds, scales, out)
    entries = _launcher_entries(out)
    records, missing = [], []
    for spec in runs:
        done = finished_result(spec.run_dir)
        entry = entries.get(str(spec.run_dir.relative_to(out)), {})
        if done is not None:
            records.append(_record(spec, {**done, "reused": True}))
        elif entry.get("status") == "failed":
            errors = entry.get("errors") or ["?"]
            outcome = {"status": "failed", "error": errors[-1], "metrics": {}}
            records.append(_record(spec, outcome))
        else:
            missing.append(spec)
    if not records:
        raise FileNotFoundError(
            f"no run of this grid has ended in {str(out)!r} yet ({len(runs)} runs expected under "
            f"{out / 'runs'}); check --out and the grid's options (--methods, --seeds, --scale)"
        )
    notes = report_notes(base, records)
    if missing:
        names = ", ".join(f"{s.group} seed {s.seed}" for s in missing)
        notes.insert(0, f"{len(missing)} of {len(runs)} runs have not finished yet: {names}.")
    write_results(records, out)
    write_report(records, out, command=command, notes=notes)
    return records, missing
