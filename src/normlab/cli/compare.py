"""``normlab compare``: train every method over several seeds and write a report.

With no arguments this is normlab's main job: the 8-Gaussian ring, methods none, sn and
bssn, three seeds each, in parallel on every core (4.4 min on 2), ending with the results
table printed and ``runs/compare-ring8/report.md`` written. An interrupted study resumes
where it stopped when run again with the same --out.

Ctrl-C or SIGTERM stops every run after its current step (each writes a checkpoint there)
and exits with 130 / 143; a second signal stops at once. A run folder is reused only for
the settings it was made with: otherwise the study stops before training and names the
differing keys (more --steps is fine: those runs continue from their checkpoints);
--rerun-changed deletes such runs and trains them again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from normlab.cli import _launch

DEFAULT_METHODS = "none,sn,bssn"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare methods over seeds: parallel runs, results.json and report.md",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=None,
        help="ring8 (default), grid25, digits, stacked-digits, folder:, npz:, cifar10:",
    )
    p.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--scale", default=None, help="scales to sweep for ssn/bssn, e.g. 0.8,1.2,1.6")
    p.add_argument("--steps", type=int, default=None, help="generator steps per run")
    p.add_argument("--arch", default=None, help="mlp, cnn or resnet (default: by data)")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig settings for every run")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any TrainConfig key for every run (repeatable)",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: core count)")
    p.add_argument("--inception-weights", default=None, help="pytorch-fid Inception weights file")
    p.add_argument("--out", default=None, help="study folder (default runs/compare-<data>)")
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="delete and train again the runs in --out made with other settings than asked",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _launch.add_arguments(p)  # --launcher slurm|submitit-local, --collect
    p.set_defaults(func=run)


def base_config(args: argparse.Namespace):
    """The TrainConfig every run starts from: --config, then the flags, then --set."""
    from normlab.gan.config import TrainConfig

    if args.config:
        cfg = TrainConfig.from_file(args.config)
        if args.data:
            cfg = cfg.replace(data=args.data)
    else:  # the tuned preset of the data (configs/<data>.yaml), the paper's defaults otherwise
        cfg = TrainConfig.preset(args.data or "ring8")
    flags = {
        "steps": args.steps,
        "arch": args.arch,
        "inception_weights": args.inception_weights,
    }
    cfg = cfg.replace(**{k: v for k, v in flags.items() if v is not None})
    return cfg.with_overrides(args.overrides) if args.overrides else cfg


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from normlab.cli._signals import graceful_stop
    from normlab.gan.distributed import launched_by_torchrun
    from normlab.study.compare import run_study
    from normlab.study.grid import build_grid, parse_methods, parse_scales
    from normlab.study.report import REPORT_FILE, RESULTS_FILE, console_table
    from normlab.study.reuse import find_conflicts
    from normlab.study.runner import StudyInterrupted

    methods = parse_methods(args.methods)
    scales = parse_scales(args.scale)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    base = base_config(args)
    slug = base.data.split(":")[0] if ":" in base.data else base.data
    out = Path(args.out or f"runs/compare-{slug}")
    seeds = list(range(args.seeds))
    grid = build_grid(base, methods, seeds, scales, out)
    n_runs = len(grid)
    if args.rerun_changed:
        for c in find_conflicts(grid):
            print(f"training again: {c.spec.group} seed {c.spec.seed} ({c.describe()})")
    # The command line as typed (when called through the console script), for the report.
    command = (
        "normlab " + shlex.join(sys.argv[1:]) if "compare" in sys.argv[1:2] else "normlab compare"
    )
    if args.collect:
        return _launch.collect(args, base, methods, seeds, scales, out, command)
    launch = _launch.launcher_for(args, base, out)
    print(f"{n_runs} runs ({', '.join(methods)} x {args.seeds} seeds) -> {out}")
    bar = tqdm(total=n_runs, unit="run", disable=args.no_progress, dynamic_ncols=True)

    def on_result(rec: dict) -> None:
        bar.update(1)
        note = "reused" if rec.get("reused") else f"{rec.get('wall_time') or 0:.0f}s"
        bar.set_postfix_str(f"last: {rec['group']} seed {rec['seed']} {rec['status']} ({note})")

    # Under torchrun the ranks must stop together: the launcher's signals end them (the newest
    # checkpoints are kept); elsewhere the first signal stops every run after its step.
    stopper = graceful_stop("the study") if not launched_by_torchrun() else _no_stop()
    try:
        with stopper as request:
            records = run_study(
                base,
                methods,
                seeds,
                out,
                scales=scales,
                workers=args.workers,
                command=command,
                on_result=on_result,
                stop=request.event if request is not None else None,
                rerun_changed=args.rerun_changed,
                launch=launch,
            )
    except StudyInterrupted as err:
        bar.close()
        names = ", ".join(f"{s.group} seed {s.seed}" for s in err.unfinished)
        print(
            f"normlab compare: interrupted by {request.name}: {err.total - len(err.unfinished)} "
            f"of {err.total} runs ended; not finished: {names}. Each keeps its newest "
            f"checkpoint; resume with the same command (the same --out):\n  {command}",
            file=sys.stderr,
        )
        return request.exit_code
    finally:
        bar.close()
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print()
    print(console_table(records))
    n_conv = sum(r.get("converged") is True for r in records)
    print(f"converged (last evaluations agree): {n_conv} of {len(records)} runs")
    print()
    print(f"results: {out / RESULTS_FILE}\nreport:  {out / REPORT_FILE}")
    return 0


class _no_stop:
    """A stand-in for ``graceful_stop`` that handles no signal (under torchrun)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
