"""Studies launched as submitit jobs: the grid through submitit's local executor, finished runs
skipped, a killed job resubmitted and resumed bit for bit, --collect, the SLURM job array's
options (through stand-in sbatch/sacct commands) and the error when the extra is missing."""

import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from normlab.cli import main
from normlab.gan.config import TrainConfig
from normlab.gan.trainer import train
from normlab.study.collect import collect_study
from normlab.study.compare import run_study
from normlab.study.grid import build_grid
from normlab.study.launchers import (
    STATE_FILE,
    Launcher,
    LaunchOptions,
    MissingExtraError,
    parse_slurm_args,
    require_submitit,
)

pytest.importorskip("submitit")

#: Long enough (120 steps) that a job can be killed after its first checkpoint (step 10) and
#: before its end; metrics only at the end, on few samples.
CFG = TrainConfig(
    data="ring8",
    steps=120,
    width=8,
    log_every=40,
    eval_every=0,
    ckpt_every=10,
    eval_samples=500,
)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _signal_job_after_first_checkpoint(
    out: Path, key: str, run_dir: Path, done: list, sig: int
) -> None:
    """Watcher thread: once ``run_dir`` holds a checkpoint past step 0, send ``sig`` to the
    training process of the job that launcher.json names for ``key`` (the child of submitit's
    local controller): SIGKILL as the OOM killer or a node failure would, SIGUSR2 as SLURM
    does before a time limit or a pre-emption."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ckpts = sorted((run_dir / "checkpoints").glob("step_*.pt"))
        if any(int(p.stem.split("_")[1]) > 0 for p in ckpts):
            try:
                entry = json.loads((out / STATE_FILE).read_text())["runs"][key]
            except (OSError, KeyError, json.JSONDecodeError):
                entry = None
            if entry is not None:
                for child in _children(int(entry["jobs"][-1])):
                    os.kill(child, sig)
                    done.append(child)
                return
        time.sleep(0.005)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One study of two runs through submitit-local; the none run's job is signalled as if
    pre-empted, the sn run's job is killed, both after their first checkpoint."""
    out = tmp_path_factory.mktemp("launched") / "study"
    runs = build_grid(CFG, ["none", "sn"], [0], None, out)
    preempted: list[int] = []
    killed: list[int] = []
    watchers = [
        threading.Thread(
            target=_signal_job_after_first_checkpoint,
            args=(out, f"runs/{spec.method}/seed0", spec.run_dir, done, sig),
            daemon=True,
        )
        for spec, done, sig in (
            (runs[0], preempted, signal.SIGUSR2),
            (runs[1], killed, signal.SIGKILL),
        )
    ]
    for w in watchers:
        w.start()
    opts = LaunchOptions("submitit-local", parallel=2, retries=1, poll_s=0.2)
    records = run_study(CFG, ["none", "sn"], [0], out, launch=Launcher(opts, out).run)
    for w in watchers:
        w.join(timeout=5)
    return out, runs, records, killed, preempted


@pytest.mark.slow
def test_grid_runs_as_local_jobs_and_reports(study):
    out, _, records, *_ = study
    assert [(r["method"], r["seed"], r["status"]) for r in records] == [
        ("none", 0, "finished"),
        ("sn", 0, "finished"),
    ]
    for r in records:
        assert r["steps"] == CFG.steps
        assert set(r["metrics"]) == {"modes_covered", "high_quality_frac", "reverse_kl"}
        assert r["job_id"] and Path(out, "jobs", r["job_id"]).is_dir()
    stored = json.loads((out / "results.json").read_text())
    assert [r["metrics"] for r in stored] == [r["metrics"] for r in records]
    assert "| sn | 1 | 0 | 0 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_killed_job_is_resubmitted_and_resumes_bit_for_bit(study, tmp_path):
    """The killed run took a second job that resumed from its checkpoint, and ends with the
    weights of the same run trained in one go in this process."""
    out, runs, records, killed, _ = study
    assert killed, "the watcher never found the job's process to kill"
    sn = records[1]
    assert sn["status"] == "finished" and sn["attempts"] == 2
    book = json.loads((out / STATE_FILE).read_text())["runs"]["runs/sn/seed0"]
    assert len(book["jobs"]) == 2 and "without a result" in book["errors"][0]
    assert sn["job_id"] == book["jobs"][1]
    train(runs[1].config, tmp_path / "reference", progress=False)
    _assert_same_final_weights(runs[1].run_dir, tmp_path / "reference")


def _assert_same_final_weights(run_dir: Path, ref_dir: Path) -> None:
    final = f"step_{CFG.steps:08d}.pt"
    ours = torch.load(run_dir / "checkpoints" / final, weights_only=True)
    ref = torch.load(ref_dir / "checkpoints" / final, weights_only=True)
    for net in ("G", "D"):
        assert ours[net].keys() == ref[net].keys()
        for k in ref[net]:
            assert torch.equal(ours[net][k], ref[net][k]), f"{net}.{k}"


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_bit_for_bit(study, tmp_path):
    """SIGUSR2 (SLURM's warning before a time limit or pre-emption): submitit calls
    RunJob.checkpoint and requeues the same job, which resumes from the run's checkpoint and
    ends with the weights of an uninterrupted run."""
    out, runs, records, _, preempted = study
    assert preempted, "the watcher never found the job's process to signal"
    none = records[0]
    assert none["status"] == "finished" and none["attempts"] == 1  # requeued, not resubmitted
    logs = "".join(p.read_text() for p in (out / "jobs" / none["job_id"]).glob("*_log.*"))
    assert "Requeued job" in logs and logs.count("Starting with JobEnvironment") == 2
    train(runs[0].config, tmp_path / "reference", progress=False)
    _assert_same_final_weights(runs[0].run_dir, tmp_path / "reference")


@pytest.mark.slow
def test_rerun_skips_finished_runs(study):
    out, runs, records, *_ = study
    before = json.loads((out / STATE_FILE).read_text())
    jobs_before = sorted(p.name for p in (out / "jobs").iterdir())
    opts = LaunchOptions("submitit-local", parallel=2, poll_s=0.2)
    again = list(Launcher(opts, out).run(runs))
    assert [s.run_dir for s, _ in again] == [s.run_dir for s in runs]
    assert all(o["reused"] for _, o in again)
    assert [o["metrics"] for _, o in again] == [r["metrics"] for r in records]
    assert json.loads((out / STATE_FILE).read_text()) == before
    assert sorted(p.name for p in (out / "jobs").iterdir()) == jobs_before


@pytest.mark.slow
def test_collect_reports_what_has_ended(study, capsys):
    """A grid of two seeds where only seed 0 ran: the report holds seed 0 and names the rest."""
    out, _, records, *_ = study
    (out / "report.md").unlink()
    (out / "results.json").unlink()
    args = ["compare", "--collect", "--methods", "none,sn", "--seeds", "2", "--out", str(out)]
    args += ["--steps", str(CFG.steps), "--set", "width=8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 run(s) not finished yet: none seed 1, sn seed 1" in printed
    collected = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in collected] == [("none", 0), ("sn", 0)]
    assert [r["metrics"] for r in collected] == [r["metrics"] for r in records]
    report = (out / "report.md").read_text()
    assert "2 of 4 runs have not finished yet: none seed 1, sn seed 1." in report


def test_collect_of_nothing_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run of this grid has ended"):
        collect_study(CFG, ["sn"], [0], tmp_path)


@pytest.mark.slow
def test_collect_counts_a_run_the_launcher_gave_up_on_as_failed(tmp_path):
    out = tmp_path
    none, _ = build_grid(CFG.replace(steps=4), ["none", "sn"], [0], None, out)
    train(none.config, none.run_dir, progress=False)
    (out / STATE_FILE).write_text(
        json.dumps(
            {
                "runs": {
                    "runs/sn/seed0": {
                        "jobs": ["1", "2"],
                        "attempts": 2,
                        "status": "failed",
                        "errors": ["job 1 ended without a result", "job 2 ended without a result"],
                    }
                }
            }
        )
    )
    records, missing = collect_study(CFG.replace(steps=4), ["none", "sn"], [0], out)
    assert [r["status"] for r in records] == ["finished", "failed"]
    assert not missing
    assert "sn seed 0: job 2 ended without a result" in (out / "report.md").read_text()


def test_missing_extra_gives_a_clear_error(monkeypatch, capsys, tmp_path):
    """With submitit unimportable (sys.modules entry None), the launcher and the command say
    which extra to install."""
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'normlab\[cluster\]'"):
        require_submitit()
    code = main(
        [
            *("compare", "--launcher", "submitit-local", "--methods", "sn", "--seeds", "1"),
            *("--out", str(tmp_path / "s"), "--no-progress"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "submitit" in err and "normlab[cluster]" in err
    assert not (tmp_path / "s" / "runs").exists()


def test_bad_launcher_options():
    with pytest.raises(ValueError, match="key=value"):
        parse_slurm_args(["account"])
    with pytest.raises(ValueError, match="retries must be at least 0"):
        LaunchOptions("slurm", retries=-1)
    with pytest.raises(ValueError, match="cannot differ"):
        LaunchOptions("slurm", gpus_per_run=2, ranks_per_run=3)
    with pytest.raises(ValueError, match="does not submit jobs"):
        LaunchOptions("processes")
    with pytest.raises(ValueError, match="set by its own option"):
        LaunchOptions("slurm", slurm_args={"time": "60"}).executor_parameters()
    with pytest.raises(ValueError, match="mem_gb"):
        LaunchOptions("slurm", slurm_args={"mem_gb": "lots"}).executor_parameters()


def test_gpus_without_cuda_device_and_slurm_flags_without_slurm_are_refused(capsys, tmp_path):
    base = ["compare", "--methods", "sn", "--seeds", "1", "--out", str(tmp_path), "--no-progress"]
    assert main([*base, "--launcher", "slurm", "--slurm-gpus-per-run", "2"]) == 1
    assert "--set device=cuda" in capsys.readouterr().err
    assert main([*base, "--slurm-partition", "gpu"]) == 1
    assert "only apply to --launcher slurm" in capsys.readouterr().err


def _fake_slurm(bin_dir: Path, log: Path, state: Path | None = None) -> None:
    """Stand-ins for srun (only looked up), sbatch (records the script, answers a new job id)
    and sacct (every job in the state written in ``state``, or FAILED)."""
    import submitit

    submitit.SlurmJob.watcher.clear()  # the job states sacct gave earlier tests (class-wide)
    st = f'$(cat "{state}")' if state is not None else "FAILED"
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": (
            "#!/bin/sh\n"
            f'n=$(ls "{log}" 2>/dev/null | wc -l)\n'
            f'mkdir -p "{log}"\ncp "$1" "{log}/sbatch_$n.sh"\n'
            'echo "Submitted batch job $((4200 + n))"\n'
        ),
        "sacct": (
            "#!/bin/sh\n"
            'echo "JobID|State|NodeList"\n'
            'for j in "$@"; do case "$j" in -*|*,*) ;; *) echo "${j}|'
            + st
            + '|node1"; for t in 0 1; do '
            f'echo "${{j}}_${{t}}|{st}|node1"; done;; esac; done\n'
        ),
    }
    bin_dir.mkdir()
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_launcher_submits_one_array_with_the_options_and_resubmits(tmp_path, monkeypatch):
    """Through stand-in SLURM commands: the grid goes out as one job array carrying the
    partition, GPUs (one task each), time limit, array limit and free-form options; each job
    that fails is submitted again (one more array), then recorded failed."""
    import normlab.study.launchers as launchers

    _fake_slurm(tmp_path / "bin", tmp_path / "submitted")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(
        launchers, "_outcome", lambda job: {"status": "failed", "metrics": {}, "error": "boom"}
    )
    out = tmp_path / "study"
    runs = build_grid(CFG.replace(device="cuda"), ["sn", "bssn"], [0], None, out)
    opts = LaunchOptions(
        "slurm",
        partition="gpu",
        gpus_per_run=2,
        time_min=720,
        retries=1,
        parallel=2,
        poll_s=0.01,
        slurm_args=parse_slurm_args(
            ["mem_gb=32", "account=lab", "setup=module load cuda", "reservation=gan"]
        ),
    )
    outcomes = list(Launcher(opts, out).run(runs))
    assert [(s.method, o["status"], o["attempts"]) for s, o in outcomes] == [
        ("sn", "failed", 2),
        ("bssn", "failed", 2),
    ]
    scripts = sorted((tmp_path / "submitted").iterdir())
    assert len(scripts) == 2  # the array, then the array of resubmissions
    text = scripts[0].read_text()
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --nodes=1",
        "#SBATCH --time=720",
        "#SBATCH --mem=32GB",
        "#SBATCH --account=lab",
        "#SBATCH --reservation=gan",
        "#SBATCH --signal=USR2@90",
        "module load cuda",
    ):
        assert line in text, line
    book = json.loads((out / STATE_FILE).read_text())["runs"]
    assert book["runs/sn/seed0"]["jobs"] == ["4200_0", "4201_0"]
    assert book["runs/bssn/seed0"]["jobs"] == ["4200_1", "4201_1"]


@pytest.mark.slow
@pytest.mark.ddp
def test_a_run_of_several_ranks_trains_with_ddp_inside_one_job(tmp_path):
    """ranks_per_run=2 without GPUs: one job of two tasks that join one gloo group (the
    variables torchrun would set, from submitit's job environment). Rank 1 returns no metrics
    (only rank 0 evaluates), and the weights match one process's on the same global batches."""
    import pickle

    cfg = CFG.replace(steps=6, ckpt_every=0, log_every=3, eval_samples=200)
    out = tmp_path / "study"
    (spec,) = build_grid(cfg, ["sn"], [0], None, out)
    opts = LaunchOptions("submitit-local", ranks_per_run=2, poll_s=0.2)
    ((_, outcome),) = list(Launcher(opts, out).run([spec]))
    assert outcome["status"] == "finished", outcome
    job_dir = out / "jobs" / outcome["job_id"]
    with open(job_dir / f"{outcome['job_id']}_1_result.pkl", "rb") as f:
        status, rank1 = pickle.load(f)
    assert status == "success" and rank1["status"] == "finished" and rank1["metrics"] == {}
    assert outcome["metrics"]
    ref_dir = tmp_path / "one_process"
    train(spec.config, ref_dir, progress=False)
    final = f"step_{cfg.steps:08d}.pt"
    ours = torch.load(spec.run_dir / "checkpoints" / final, weights_only=True)
    ref = torch.load(ref_dir / "checkpoints" / final, weights_only=True)
    lr_steps = cfg.lr_d * cfg.steps
    for net in ("G", "D"):
        for k in ref[net]:
            if k.endswith("bias"):
                # A bias whose gradient is 0 in real arithmetic (a hinge margin met by every
                # sample) is +-1e-10 in float, summed in another order on two ranks: Adam
                # turns its sign into +-lr a step. Bounded by that, not by rounding.
                diff = (ours[net][k] - ref[net][k]).abs().max().item()
                assert diff <= 2 * lr_steps, f"{net}.{k}"
            else:
                torch.testing.assert_close(
                    ours[net][k], ref[net][k], rtol=1e-4, atol=1e-5, msg=f"{net}.{k}"
                )


def _readme_commands(marker: str) -> list[list[str]]:
    """The ``normlab compare`` commands of the README's SLURM section containing ``marker``."""
    import re
    import shlex

    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("## Studies on a SLURM cluster")[1].split("\n## ")[0]
    block = re.findall(r"```\n(.*?)```", section, re.S)[0].replace("\\\n", " ")
    lines = [ln.split("#")[0] for ln in block.splitlines() if ln.startswith("normlab compare")]
    return [shlex.split(ln)[1:] for ln in lines if marker in ln]


def test_readme_slurm_commands_parse_into_the_jobs_they_describe(tmp_path, monkeypatch):
    from normlab.cli import _launch, build_parser
    from normlab.cli.compare import base_config

    _fake_slurm(tmp_path / "bin", tmp_path / "submitted")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # configs/ of the README
    (slurm,) = _readme_commands("--launcher slurm")
    args = build_parser().parse_args(slurm)
    base = base_config(args)
    launch = _launch.launcher_for(args, base, tmp_path / "study")
    params = launch.__self__.options.executor_parameters()
    assert params["gpus_per_node"] == params["tasks_per_node"] == 2
    assert params["timeout_min"] == 720 and params["slurm_partition"] == "gpu"
    assert params["slurm_array_parallelism"] == 20 and params["cpus_per_task"] == 8
    assert params["slurm_setup"] == ["source /shared/venvs/normlab/bin/activate"]
    assert base.device == "cuda" and base.arch == "cnn"
    (collect,) = _readme_commands("--collect")
    cargs = build_parser().parse_args(collect)
    assert cargs.collect and base_config(cargs) == base
    assert (cargs.methods, cargs.scale, cargs.seeds) == (args.methods, args.scale, args.seeds)


def test_a_rerun_waits_for_slurm_jobs_still_queued_instead_of_submitting_again(
    tmp_path, monkeypatch
):
    """launcher.json names a job of an earlier invocation for one run; sacct says it is
    RUNNING: that run is awaited, not resubmitted (only the other run is submitted), and both
    end when their jobs complete."""
    import normlab.study.launchers as launchers

    state = tmp_path / "state"
    state.write_text("RUNNING")
    _fake_slurm(tmp_path / "bin", tmp_path / "submitted", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(launchers, "_outcome", lambda job: {"status": "finished", "metrics": {}})
    out = tmp_path / "study"
    out.mkdir()
    earlier = {"runs/sn/seed0": {"jobs": ["4300_0"], "attempts": 1, "status": "submitted"}}
    (out / STATE_FILE).write_text(json.dumps({"runs": earlier}))
    runs = build_grid(CFG, ["sn", "bssn"], [0], None, out)
    threading.Timer(1.0, state.write_text, args=("COMPLETED",)).start()
    opts = LaunchOptions("slurm", gpus_per_run=0, poll_s=0.1)
    outcomes = {s.method: o for s, o in Launcher(opts, out).run(runs)}
    assert outcomes["sn"]["job_id"] == "4300_0" and outcomes["sn"]["attempts"] == 1
    # A batch of one job is submitted as a plain job (no array): id 4200.
    assert outcomes["bssn"]["job_id"] == "4200" and outcomes["bssn"]["attempts"] == 1
    assert len(list((tmp_path / "submitted").iterdir())) == 1  # bssn's job alone
    book = json.loads((out / STATE_FILE).read_text())["runs"]
    assert book["runs/sn/seed0"]["jobs"] == ["4300_0"]
    assert book["runs/sn/seed0"]["status"] == book["runs/bssn/seed0"]["status"] == "finished"
