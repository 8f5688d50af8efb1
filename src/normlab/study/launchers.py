"""Run a study's grid as ``submitit`` jobs: on a SLURM cluster, or on this machine.

``normlab compare --launcher slurm`` submits every run of the grid that has not finished
as one job of a SLURM job array (``sbatch --array``); ``--launcher submitit-local`` runs
the very same jobs through submitit's ``LocalExecutor`` (a process per job on this
machine), which is how the path is tested without a cluster. The default launcher,
``processes``, is ``normlab.study.runner``'s pool and needs nothing of this module.

One job trains one run (``RunJob``) in ``DIR/runs/<group>/seed<k>``, always with
``resume``: a job that starts on a folder holding checkpoints continues from the newest.

* **Several GPUs per run.** With ``gpus_per_run = K`` a job has K tasks on one node, one
  GPU each; every task exports the variables torchrun would set (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, through
  ``submitit.helpers.TorchDistributedEnvironment``) and ``normlab.gan.trainer.train``
  then trains with DDP exactly as under ``torchrun --nproc_per_node=K`` (rank r on
  ``cuda:r``, rank 0 writes the run folder). ``ranks_per_run`` alone gives CPU ranks (gloo).
* **Time limits and pre-emption.** SLURM signals a job (``USR2``, 90 s ahead) before its
  time limit or when it is pre-empted; submitit then calls ``RunJob.checkpoint`` and
  requeues the job, which resumes from the run's newest checkpoint (at most
  ``ckpt_every`` steps are redone). A run may be requeued ``max_timeouts`` times for
  time-outs (pre-emptions are not counted by submitit).
* **Failures.** A job that ends without a result (killed, node failure, out of memory) or
  whose run raised is submitted again, up to ``retries`` times; the new job resumes from
  the newest checkpoint. After that the run is recorded ``failed`` with its last error (a
  re-run of the study tries it again, with as many retries).
* **Skip what finished.** A run whose folder holds a final ``metrics.json`` is not
  submitted again. ``DIR/launcher.json`` records each run's jobs and attempts; a re-run of
  the same command waits for jobs of a previous invocation still queued or running
  (SLURM) instead of submitting them twice.

The jobs' pickles and logs go to ``DIR/jobs/`` (``<job id>_<task>_log.out/err``).

Example::

    >>> opts = LaunchOptions("slurm", partition="gpu", gpus_per_run=2, time_min=720)
    >>> records = run_study(base, ["sn", "bssn"], [0, 1, 2], "runs/c10",
    ...                     launch=Launcher(opts, "runs/c10").run)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normlab.study.grid import RunSpec
from normlab.study.runner import default_workers, finished_result

#: The values of ``normlab compare --launcher``.
LAUNCHERS = ("processes", "slurm", "submitit-local")
#: What each submitit launcher is called in ``submitit.AutoExecutor``.
CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}
#: Where submitit keeps the jobs' pickles and logs, inside the study folder.
JOBS_DIR = "jobs"
#: The launcher's record of jobs and attempts, inside the study folder.
STATE_FILE = "launcher.json"
#: SLURM states of a job that may still produce a result.
ACTIVE_SLURM_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
)
#: ``AutoExecutor``'s cluster-independent parameters, with their types.
GENERIC_PARAMETERS: dict[str, type] = {
    "mem_gb": float,
    "cpus_per_task": int,
    "nodes": int,
    "name": str,
    "stderr_to_stdout": bool,
}
#: The version of submitit the extra pins (pyproject.toml's ``cluster`` extra).
EXTRA_HINT = "pip install 'normlab[cluster]'  (or: pip install submitit)"


class MissingExtraError(RuntimeError):
    """An optional dependency (an extra of normlab) is not installed."""


def require_submitit() -> Any:
    """The ``submitit`` module, or ``MissingExtraError`` saying how to install it."""
    try:
        import submitit
    except ImportError as err:
        raise MissingExtraError(
            f"--launcher slurm and --launcher submitit-local need the submitit package, which "
            f"is not installed ({err}); it is an optional extra of normlab: {EXTRA_HINT}"
        ) from None
    return submitit


#: submitit's options that take a list (each --slurm-arg KEY=VALUE adds one item).
LIST_PARAMETERS = ("setup", "teardown", "srun_args")


def parse_slurm_args(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict; the keys' dashes become underscores, and the list
    options (``setup``, ``teardown``, ``srun_args``) collect every value given.

    >>> parse_slurm_args(["account=lab", "mem-gb=32", "setup=module load cuda", "setup=. env"])
    {'account': 'lab', 'mem_gb': '32', 'setup': ['module load cuda', '. env']}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(
                f"--slurm-arg takes key=value (a submitit or sbatch option), got {item!r}; "
                f"e.g. --slurm-arg account=mylab --slurm-arg mem_gb=64"
            )
        if key in LIST_PARAMETERS:
            out.setdefault(key, []).append(value.strip())
        else:
            out[key] = value.strip()
    return out


def _typed(value: str, typ: type) -> Any:
    if typ is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return typ(value)


@dataclass(frozen=True)
class LaunchOptions:
    """How the jobs of a study are submitted.

    ``kind``: ``"slurm"`` or ``"submitit-local"``. ``gpus_per_run``: GPUs of one run (one
    DDP rank each; default 1 on SLURM, 0 locally). ``ranks_per_run``: DDP processes of one
    run (default ``max(1, gpus_per_run)``; without GPUs they are CPU ranks). ``time_min``:
    each job's time limit in minutes. ``retries``: resubmissions of a failed job.
    ``max_timeouts``: requeues after time-outs. ``parallel``: jobs running at once (the
    array's ``%`` limit on SLURM; default there: all, locally: the core count). ``slurm_args``: any
    other submitit parameter (``mem_gb``, ``cpus_per_task``, ``account``, ``qos``,
    ``constraint``, ...) or, for a key submitit does not know, an ``#SBATCH --key=value``
    line. ``poll_s``: seconds between looks at the jobs' states.
    """

    kind: str
    partition: str | None = None
    gpus_per_run: int | None = None
    ranks_per_run: int | None = None
    time_min: int = 240
    retries: int = 2
    max_timeouts: int = 10
    parallel: int | None = None
    slurm_args: dict[str, Any] = field(default_factory=dict)
    poll_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in CLUSTERS:
            raise ValueError(
                f"launcher {self.kind!r} does not submit jobs; choose from: {', '.join(CLUSTERS)}"
            )
        checks = [
            ("gpus_per_run", self.gpus_per_run, 0),
            ("ranks_per_run", self.ranks_per_run, 1),
            ("time_min", self.time_min, 1),
            ("retries", self.retries, 0),
            ("max_timeouts", self.max_timeouts, 0),
            ("parallel", self.parallel, 1),
        ]
        for name, value, least in checks:
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if self.gpus and self.ranks != self.gpus:
            raise ValueError(
                f"each DDP rank of a run uses one GPU: ranks_per_run={self.ranks_per_run} "
                f"cannot differ from gpus_per_run={self.gpus_per_run}"
            )

    @property
    def gpus(self) -> int:
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return 1 if self.kind == "slurm" else 0

    @property
    def ranks(self) -> int:
        return self.ranks_per_run or max(1, self.gpus)

    @property
    def poll_seconds(self) -> float:
        if self.poll_s is not None:
            return self.poll_s
        return 30.0 if self.kind == "slurm" else 0.5

    def executor_parameters(self) -> dict[str, Any]:
        """The keyword arguments of ``AutoExecutor.update_parameters`` for these options."""
        require_submitit()
        from submitit.slurm.slurm import SlurmExecutor

        params: dict[str, Any] = {
            "name": "normlab",
            "timeout_min": self.time_min,
            "nodes": 1,
            "tasks_per_node": self.ranks,
            "gpus_per_node": self.gpus,
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.parallel:
            params["slurm_array_parallelism"] = self.parallel
        sbatch: dict[str, str] = {}
        slurm_valid = SlurmExecutor._valid_parameters()
        reserved = {"timeout_min", "tasks_per_node", "gpus_per_node", "time", "ntasks_per_node"}
        for key, value in self.slurm_args.items():
            if key in reserved or key in ("partition", "array_parallelism"):
                raise ValueError(
                    f"--slurm-arg {key}=... is set by its own option (--slurm-time, "
                    f"--slurm-gpus-per-run, --ranks-per-run, --slurm-partition, --workers)"
                )
            try:
                if key in GENERIC_PARAMETERS:
                    params[key] = _typed(value, GENERIC_PARAMETERS[key])
                elif key in LIST_PARAMETERS:
                    params[f"slurm_{key}"] = list(value)
                elif key in slurm_valid:
                    params[f"slurm_{key}"] = int(value) if value.isdigit() else value
                else:  # a plain sbatch option submitit does not name
                    sbatch[key.replace("_", "-")] = value
            except ValueError as err:
                raise ValueError(f"--slurm-arg {key}={value!r}: {err}") from None
        if sbatch:
            params["slurm_additional_parameters"] = sbatch
        return params

    def executor(self, folder: str | Path) -> Any:
        """A ``submitit.AutoExecutor`` for these options, writing pickles and logs to ``folder``."""
        submitit = require_submitit()
        cluster = CLUSTERS[self.kind]
        try:
            ex = submitit.AutoExecutor(
                folder=Path(folder) / "%j",
                cluster=cluster,
                slurm_max_num_timeout=self.max_timeouts,
                local_max_num_timeout=self.max_timeouts,
            )
        except RuntimeError as err:
            if cluster != "slurm":
                raise
            raise RuntimeError(
                f"--launcher slurm needs a SLURM cluster (srun and sbatch on PATH): {err}. "
                f"Use --launcher submitit-local to run the same jobs on this machine"
            ) from None
        ex.update_parameters(**self.executor_parameters())
        return ex


def _local_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _export_torch_distributed() -> None:
    """In a job of several tasks: the variables torchrun sets, from submitit's job env."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # Every task sees the node's GPUs; rank r takes cuda:LOCAL_RANK, as under torchrun.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


@dataclass(frozen=True)
class RunJob:
    """The job of one run: train it (resuming), return its outcome; checkpointable.

    ``threads``: torch threads of the run (None: every core the job's task may use).
    """

    spec: RunSpec
    threads: int | None = None

    def __call__(self) -> dict[str, Any]:
        _export_torch_distributed()
        return train_run(self.spec, self.threads or _local_threads())

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on time-out or pre-emption: requeue this job as it is (it
        resumes from the run's newest checkpoint)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(RunJob(self.spec, self.threads))


def train_run(spec: RunSpec, threads: int) -> dict[str, Any]:
    """Train (or continue) one run with ``threads`` torch threads; the outcome (never raises)."""
    import torch

    from normlab.gan.trainer import train

    torch.set_num_threads(threads)
    start = time.perf_counter()
    resumed = (spec.run_dir / "checkpoints").is_dir()
    try:
        out = train(spec.config.replace(threads=threads), spec.run_dir, resume=True, progress=False)
        return {
            "status": out["status"],
            "metrics": out.get("metrics", {}),
            "steps": out.get("steps"),
            "divergence": out.get("divergence"),
            "wall_time": out.get("wall_time", time.perf_counter() - start),
            "resumed": resumed,
        }
    except Exception as err:  # recorded; the launcher decides whether to try again
        return {
            "status": "failed",
            "metrics": {},
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=5),
            "wall_time": time.perf_counter() - start,
            "resumed": resumed,
        }


def _outcome(job: Any) -> dict[str, Any]:
    """Rank 0's outcome of a job that is done, or ``failed`` when it left none."""
    try:
        return job.results()[0]
    except Exception as err:  # killed, timed out for good, node failure, ...
        text = str(err).strip().splitlines()
        return {
            "status": "failed",
            "metrics": {},
            "error": f"job {job.job_id} ended without a result: "
            f"{type(err).__name__}: {text[-1] if text else ''}",
        }


class JobBook:
    """``DIR/launcher.json``: per run folder (relative to ``DIR``), its jobs and attempts."""

    def __init__(self, out_dir: Path, kind: str) -> None:
        self.out_dir, self.path = out_dir, out_dir / STATE_FILE
        self.data: dict[str, Any] = {"launcher": kind, "runs": {}}
        if self.path.is_file():
            try:
                self.data["runs"] = json.loads(self.path.read_text()).get("runs", {})
            except (OSError, json.JSONDecodeError):
                pass  # a torn file: start a new record (run folders hold the truth)

    def key(self, spec: RunSpec) -> str:
        try:
            return str(spec.run_dir.relative_to(self.out_dir))
        except ValueError:
            return str(spec.run_dir)

    def entry(self, spec: RunSpec) -> dict[str, Any]:
        return self.data["runs"].setdefault(self.key(spec), {"jobs": [], "attempts": 0})

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Launcher:
    """Submits a study's runs as jobs and yields their outcomes (see the module doc)."""

    def __init__(self, options: LaunchOptions, out_dir: str | Path) -> None:
        self.options = options
        self.out_dir = Path(out_dir)
        self.jobs_dir = self.out_dir / JOBS_DIR

    def _still_running(self, spec: RunSpec, entry: dict[str, Any]) -> Any | None:
        """A job of an earlier invocation that may still train ``spec`` (SLURM: reattached;
        locally a live one is an error: its process is not ours to wait for)."""
        if entry.get("status") != "submitted" or not entry.get("jobs"):
            return None
        job_id = str(entry["jobs"][-1])
        if self.options.kind == "slurm":
            submitit = require_submitit()
            job = submitit.SlurmJob(folder=self.jobs_dir / "%j", job_id=job_id)
            state = str(job.state).split()[0].upper()
            return job if state in ACTIVE_SLURM_STATES else None
        if job_id.isdigit() and _pid_alive(int(job_id)):
            raise RuntimeError(
                f"run {spec.run_dir} is still being trained by local job {job_id} of an earlier "
                f"`normlab compare`; wait for it to end (or stop it: kill {job_id}) and run again"
            )
        return None

    def run(self, runs: list[RunSpec]) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Yield ``(spec, outcome)`` for every run: finished ones first, the rest as their
        jobs end (after any resubmissions). Each outcome carries ``attempts`` (jobs this
        invocation and earlier ones submitted for the run) and ``job_id`` (the last)."""
        opts = self.options
        book = JobBook(self.out_dir, opts.kind)
        pending: list[RunSpec] = []
        for spec in runs:
            done = finished_result(spec.run_dir)
            if done is not None:
                yield spec, {**done, "reused": True}
            else:
                pending.append(spec)
        if not pending:
            return
        executor = opts.executor(self.jobs_dir)
        threads = 1 if opts.kind == "submitit-local" else None
        active: dict[Any, RunSpec] = {}
        tries: dict[Path, int] = {}  # jobs this invocation submitted per run (retries count)
        queue: deque[RunSpec] = deque()
        for spec in pending:
            job = self._still_running(spec, book.entry(spec))
            if job is not None:
                active[job] = spec
            else:
                queue.append(spec)
        # SLURM: everything in one array (its %N limit, from ``parallel``, throttles there);
        # locally: ``parallel`` jobs at a time.
        limit = len(pending) if opts.kind == "slurm" else (opts.parallel or default_workers())

        def submit(specs: list[RunSpec]) -> None:
            with executor.batch():  # one SLURM job array
                jobs = [executor.submit(RunJob(s, threads)) for s in specs]
            for job, s in zip(jobs, specs):
                entry = book.entry(s)
                entry["jobs"].append(job.job_id)
                entry["attempts"] += 1
                tries[s.run_dir] = tries.get(s.run_dir, 0) + 1
                entry["status"] = "submitted"
                active[job] = s
            book.save()

        try:
            while queue or active:
                free = limit - len(active)
                if queue and free > 0:
                    submit([queue.popleft() for _ in range(min(free, len(queue)))])
                ended = [job for job in list(active) if job.done()]
                again: list[RunSpec] = []
                for job in ended:
                    spec = active.pop(job)
                    out = _outcome(job)
                    entry = book.entry(spec)
                    if out["status"] == "failed" and tries.get(spec.run_dir, 0) <= opts.retries:
                        entry.setdefault("errors", []).append(out.get("error"))
                        entry["status"] = "retrying"
                        book.save()
                        again.append(spec)  # resumes from its newest checkpoint
                        continue
                    entry["status"] = out["status"]
                    if out.get("error"):
                        entry.setdefault("errors", []).append(out["error"])
                    book.save()
                    yield spec, {**out, "attempts": entry["attempts"], "job_id": job.job_id}
                queue.extendleft(reversed(again))  # retries go first, in grid order
                if not ended and (queue or active):
                    time.sleep(opts.poll_seconds)
        finally:
            if opts.kind == "submitit-local":
                # This machine's job processes end with this one (a later run would otherwise
                # find a second trainer in their folders); SLURM jobs go on, and a re-run
                # waits for them.
                for job in active:
                    job.cancel(check=False)
                for job in active:
                    _wait_gone(job)
                    book.entry(active[job])["status"] = "cancelled"
                if active:
                    book.save()


def _wait_gone(job: Any, timeout_s: float = 30.0) -> None:
    """Wait for a cancelled local job's process to exit."""
    proc = getattr(job, "_process", None)
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout_s)
    except Exception:  # still there: leave it a harder signal
        proc.kill()
