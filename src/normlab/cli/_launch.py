"""The options of ``normlab compare`` that choose where the runs train (``--launcher``) and
``--collect``; the launching itself is ``normlab.study.launchers``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``--launcher``, the SLURM options, ``--retries`` and ``--collect`` on ``p``."""
    from normlab.study.launchers import LAUNCHERS

    g = p.add_argument_group(
        "launchers (slurm and submitit-local need: pip install 'normlab[cluster]')"
    )
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="processes",
        help="processes: parallel processes here (default); slurm: one SLURM job per run, "
        "submitted as a job array through submitit; submitit-local: the same jobs run here",
    )
    g.add_argument("--slurm-partition", default=None, help="SLURM partition of the jobs")
    g.add_argument(
        "--slurm-gpus-per-run",
        type=int,
        default=None,
        help="GPUs of each run, one DDP rank each (default 1 with slurm, 0 with submitit-local)",
    )
    g.add_argument(
        "--ranks-per-run",
        type=int,
        default=None,
        help="DDP processes of each run (default: one per GPU, or 1); without GPUs, CPU ranks",
    )
    g.add_argument(
        "--slurm-time",
        type=int,
        default=240,
        metavar="MINUTES",
        help="time limit of each job; a run that needs longer is requeued and resumes (240)",
    )
    g.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other job option, repeatable: submitit's (mem_gb, cpus_per_task, account, "
        "qos, constraint, setup, ...) or else a raw #SBATCH --KEY=VALUE",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        help="resubmissions of a failed or killed job; it resumes from its checkpoint (2)",
    )
    g.add_argument(
        "--slurm-max-timeouts",
        type=int,
        default=10,
        help="requeues of a job that reached its time limit (10)",
    )
    g.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: write results.json and report.md in --out from the runs that ended",
    )


def launcher_for(args: argparse.Namespace, base: Any, out: Path) -> Any:
    """The ``launch`` callable of ``run_study`` the arguments ask for (None: processes)."""
    if args.launcher == "processes":
        used = [
            flag
            for flag, value, default in (
                ("--slurm-partition", args.slurm_partition, None),
                ("--slurm-gpus-per-run", args.slurm_gpus_per_run, None),
                ("--ranks-per-run", args.ranks_per_run, None),
                ("--slurm-arg", args.slurm_arg, []),
            )
            if value != default
        ]
        if used:
            raise ValueError(
                f"{', '.join(used)} only apply to --launcher slurm or submitit-local "
                f"(the launcher is processes)"
            )
        return None
    from normlab.study.launchers import Launcher, LaunchOptions, parse_slurm_args, require_submitit

    require_submitit()
    opts = LaunchOptions(
        args.launcher,
        partition=args.slurm_partition,
        gpus_per_run=args.slurm_gpus_per_run,
        ranks_per_run=args.ranks_per_run,
        time_min=args.slurm_time,
        retries=args.retries,
        max_timeouts=args.slurm_max_timeouts,
        parallel=args.workers,
        slurm_args=parse_slurm_args(args.slurm_arg),
    )
    if opts.gpus and not str(base.device).startswith("cuda"):
        raise ValueError(
            f"each run gets {opts.gpus} GPU(s) but trains on device {base.device!r}: add "
            f"--set device=cuda (or --slurm-gpus-per-run 0 for CPU jobs)"
        )
    return Launcher(opts, out).run


def collect(args: argparse.Namespace, base: Any, methods, seeds, scales, out: Path, command: str):
    """``--collect``: the report of the runs that ended; prints what it wrote."""
    from normlab.study.collect import collect_study
    from normlab.study.report import REPORT_FILE, RESULTS_FILE, console_table

    records, missing = collect_study(base, methods, seeds, out, scales=scales, command=command)
    print(console_table(records))
    print()
    if missing:
        print(
            f"{len(missing)} run(s) not finished yet: "
            + ", ".join(f"{s.group} seed {s.seed}" for s in missing)
        )
    print(f"results: {out / RESULTS_FILE}\nreport:  {out / REPORT_FILE}")
    return 0
