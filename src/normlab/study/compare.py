"""A comparison study: methods x seeds (x scales), run in parallel, summarised in a report.

Example::

    >>> from normlab.gan.config import TrainConfig
    >>> records = run_study(TrainConfig(data="ring8", steps=500), ["sn", "bssn"], seeds=[0, 1],
    ...                     out_dir="runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from normlab.data.stacked import STACKED_SPEC
from normlab.gan.config import TrainConfig
from normlab.reparam import SCALED_METHODS
from normlab.reparam.registry import DEFAULT_SCALE
from normlab.study.convergence import check_run
from normlab.study.grid import RunSpec, build_grid
from normlab.study.report import write_report, write_results
from normlab.study.reuse import check_reuse, stored_config
from normlab.study.runner import StudyInterrupted, run_grid


def _record(spec: RunSpec, outcome: dict[str, Any]) -> dict[str, Any]:
    # What actually ran: the run folder's own config (a reused run keeps its log interval...).
    stored = stored_config(spec.run_dir) if outcome["status"] != "failed" else None
    cfg = (stored or spec.config).to_dict()
    convergence = check_run(spec.run_dir)
    return {
        "group": spec.group,
        "method": spec.method,
        "seed": spec.seed,
        "scale": spec.scale,
        "status": outcome["status"],
        "metrics": outcome.get("metrics", {}),
        "wall_time": outcome.get("wall_time"),
        "steps": outcome.get("steps"),
        "divergence": outcome.get("divergence"),
        "error": outcome.get("error"),
        "reused": outcome.get("reused", False),
        "resumed": outcome.get("resumed", False),
        "converged": convergence["converged"],
        "convergence": convergence,
        "run_dir": str(spec.run_dir),
        "hyperparameters": {k: cfg[k] for k in ("lr_d", "lr_g", "beta1", "beta2", "n_dis", "loss")},
        "config": cfg,
        # Launched as jobs (normlab.study.launchers): how many jobs the run took, the last one.
        **{k: outcome[k] for k in ("attempts", "job_id") if k in outcome},
    }


#: The ring8 preset's scale sweep (30 runs), timed on 2 cores, for the report's pointer to it.
SWEEP_MINUTES_RING8 = "about 15 minutes"


def report_notes(base: TrainConfig, records: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Caveats the report must state for this data, and for these ``records`` where the
    study's scaled methods ran at one ``c``, where the scale knob's figure is."""
    notes = []
    if base.is_mixture:
        notes.append(
            "Mixture metrics (PacGAN): a sample is high quality within 3 std of its nearest "
            "mode; a mode is covered by at least one high-quality sample; reverse KL is "
            "KL(q || uniform) of the high-quality samples' mode histogram."
        )
    elif base.data == STACKED_SPEC:
        notes.append(
            "Modes and KL follow the Stacked MNIST protocol (VEEGAN, PacGAN) on scikit-learn's 8x8 "
            "digits: 26,000 samples per run, each channel classified by a digit classifier "
            "trained on the bundled digits (classifier_accuracy: its accuracy on 360 held-out "
            "digits); a mode is a digit triple (1000 in all); KL is KL(generated triple "
            "histogram || uniform over 1000), in nats (log 1000 = 6.91 for a single triple)."
        )
        if not base.inception_weights:
            notes.append(
                "FID/KID/PRDC are computed on the digit classifier's features (128-d per channel, "
                "384-d per image), not on Inception-v3: they compare methods within this report "
                "and are not comparable to published FIDs."
            )
    elif not base.inception_weights:
        notes.append(
            "Image metrics are computed on the features of a small classifier trained on this "
            "dataset itself (cached as feature_net.pt), not on Inception-v3: they compare "
            "methods within this report, and are not comparable to published FIDs. Pass "
            "--inception-weights FILE for the standard FID network."
        )
    scale = scale_note(base, records)
    if scale is not None:
        notes.append(scale)
    return notes


def scale_note(base: TrainConfig, records: Sequence[dict[str, Any]]) -> str | None:
    """Where the scale knob's figure is, for a study whose scaled methods ran at one ``c``."""
    scaled = sorted({r["method"] for r in records if r["method"] in SCALED_METHODS})
    if not scaled or any(r.get("scale") is not None for r in records):
        return None
    c = base.scale if base.scale is not None else DEFAULT_SCALE
    names = "/".join(scaled)
    cost = f"; 30 runs, {SWEEP_MINUTES_RING8} on 2 cores" if base.data == "ring8" else ""
    return (
        f"The scale knob (Lin et al.): {names} ran at one c here (c = {c:g}). Their claim, "
        "that some c above SN's implicit 1 beats plain SN and too large a c loses modes, "
        "needs c swept: `normlab compare --methods ssn,bssn --scale 0.5,1,1.5,2,3` with "
        "this study's data and settings draws every metric against c, 95% bands, SN's level "
        f"beside (scale_sweep.png{cost})."
    )


def report_sections(base: TrainConfig) -> list[str]:
    """Further report sections for this data: the published rows of its benchmark."""
    if base.data == STACKED_SPEC:
        from normlab.study.published_stacked import published_stacked_markdown

        return [published_stacked_markdown()]
    return []


def run_study(
    base: TrainConfig,
    methods: list[str],
    seeds: list[int],
    out_dir: str | Path,
    *,
    scales: list[float] | None = None,
    workers: int | None = None,
    command: str = "normlab compare",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    rerun_changed: bool = False,
    launch: Callable[[list[RunSpec]], Iterator[tuple[RunSpec, dict[str, Any]]]] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the grid, write ``results.json`` after every run and the report at the end.

    Returns the records in grid order. ``on_result`` is called with each record as its
    run ends (for progress display). Run folders are reused only for the settings they were
    made with (``normlab.study.reuse``): a conflict raises ``ConfigMismatch`` before anything
    trains, unless ``rerun_changed`` (those runs are deleted and train again). Setting
    ``stop`` ends the runs under way at their next step; ``StudyInterrupted`` is then raised
    after ``results.json`` is written (unfinished runs have status ``interrupted``).
    ``launch`` runs the grid instead of the local processes (e.g.
    ``normlab.study.launchers.Launcher(...).run``: SLURM jobs).
    """
    out = Path(out_dir)
    runs = build_grid(base, methods, seeds, scales, out)
    check_reuse(runs, rerun_changed=rerun_changed, out_dir=out)
    out.mkdir(parents=True, exist_ok=True)
    order = {spec.run_dir: i for i, spec in enumerate(runs)}
    done: dict[Path, dict[str, Any]] = {}
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    outcomes = run_grid(runs, workers, stop=stop) if launch is None else launch(runs)
    try:
        for spec, outcome in outcomes:
            rec = _record(spec, outcome)
            done[spec.run_dir] = rec
            if main_rank:
                write_results(sorted(done.values(), key=lambda r: order[Path(r["run_dir"])]), out)
            if on_result is not None:
                on_result(rec)
    except StudyInterrupted:
        if main_rank:  # the runs never started are listed too
            for spec in runs:
                if spec.run_dir not in done:
                    done[spec.run_dir] = _record(
                        spec, {"status": "interrupted", "error": "not started"}
                    )
            write_results([done[spec.run_dir] for spec in runs], out)
        raise
    records = [done[spec.run_dir] for spec in runs]
    if main_rank:
        write_results(records, out)
        write_report(
            records,
            out,
            command=command,
            notes=report_notes(base, records),
            sections=report_sections(base),
        )
    return records
