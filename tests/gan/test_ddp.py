"""``normlab train`` on 2 CPU ranks (gloo, DistributedDataParallel) against one process.

* Two ranks started like torchrun starts them (``RANK``, ``WORLD_SIZE``, ... in the
  environment; ``torch.multiprocessing.spawn``) train ring8 under SN for a few steps: every
  parameter and buffer (power vectors included) is bit-identical on both ranks, and the
  final checkpoint matches a single-process run on the same global batch to float
  tolerance (the ranks take contiguous halves of the batch that one process draws, so the
  only difference is the order in which float sums are added). An odd global batch (rows
  split 16/15) matches too, through the per-rank loss weights, and so does WGAN-GP (each
  rank uses its rows' interpolation weights).
* ``python -m torch.distributed.run --nproc_per_node=2 -m normlab train`` (the CLI, as a user
  runs it) writes one run folder from rank 0, and its checkpoint resumes in one process.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from normlab.gan import distributed
from normlab.gan.checkpoint import latest_checkpoint
from normlab.gan.config import TrainConfig
from normlab.gan.run import build_networks, load_run_data
from tests._net import free_port, run_command, run_ranks

WORLD = 2

# Several processes form a torch.distributed group: run serially, outside xdist.
pytestmark = pytest.mark.ddp


def _cfg(**kw) -> TrainConfig:
    base = dict(
        data="ring8",
        method="sn",
        # Not hinge: at init a hidden unit active on every sample gets a bias gradient that is
        # exactly 0 in real arithmetic, +-1e-10 in float; Adam turns that sign into +-lr.
        loss="ns",
        steps=6,
        width=16,
        depth=2,
        batch_size=32,
        n_dis=2,
        lr_d=5e-3,
        lr_g=5e-3,
        beta2=0.9,
        ema=0.9,
        log_every=3,
        eval_every=0,
        ckpt_every=3,
        eval_samples=200,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _worker(rank: int, port: int, cfg: TrainConfig, out: str, dump: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    from normlab.gan import trainer

    checked = distributed.check_in_sync

    def spy(ctx, **modules):  # every rank saves what it holds at each check, then checks
        states = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in modules.items()}
        torch.save(states, Path(dump) / f"rank{rank}.pt")
        checked(ctx, **modules)

    distributed.check_in_sync = spy
    result = trainer.train(cfg, out, progress=False)
    assert result["status"] == "finished", result


def _spawn(cfg: TrainConfig, tmp: Path) -> tuple[Path, Path]:
    out, dump = tmp / "ddp", tmp / "dump"
    dump.mkdir()
    run_ranks(_worker, (free_port(), cfg, str(out), str(dump)), nprocs=WORLD)
    return out, dump


def _final(run: Path) -> dict:
    found = latest_checkpoint(run)
    assert found is not None
    return found[1]


def _assert_close(a: dict, b: dict, what: str, atol: float = 1e-5) -> float:
    worst = 0.0
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=f"{what}.{k}")
        worst = max(worst, (a[k].double() - b[k].double()).abs().max().item())
    return worst


@pytest.mark.slow
@pytest.mark.parametrize(("batch_size", "loss"), [(32, "ns"), (31, "ns"), (32, "wgan-gp")])
def test_two_ranks_match_one_process(tmp_path: Path, batch_size: int, loss: str) -> None:
    from normlab.gan.trainer import train

    cfg = _cfg(batch_size=batch_size, loss=loss)
    out, dump = _spawn(cfg, tmp_path)

    # Both ranks hold the same parameters and buffers (power vectors, BN statistics), bitwise.
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    vectors = [k for k in ranks[0]["D"] if k.endswith((".u0", ".v0"))]
    assert len(vectors) == 6  # 3 SN layers x (u, v)
    for net in ("G", "D"):
        for k, t in ranks[0][net].items():
            assert torch.equal(t, ranks[1][net][k]), f"{net}.{k} differs between ranks"

    # Only rank 0 wrote: one log line per logged step, one set of checkpoints.
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [3, 6]
    assert not list((out / "checkpoints").glob(".*.tmp"))

    single = train(cfg, tmp_path / "single", progress=False)
    assert single["status"] == "finished"
    a, b = _final(out), _final(tmp_path / "single")
    assert a["step"] == b["step"] == cfg.steps
    if loss == "wgan-gp":
        # A hidden unit active on every sample has a bias gradient of exactly 0 in real
        # arithmetic under the Wasserstein loss and its penalty alike; in float it is +-1e-10,
        # whose sign Adam turns into +-lr. Those biases are left out; all the rest must match.
        a["D"] = {k: v for k, v in a["D"].items() if not k.endswith("bias")}
        b["D"] = {k: v for k, v in b["D"].items() if not k.endswith("bias")}
        assert torch.equal(a["rng"]["gp"], b["rng"]["gp"])  # the same interpolation weights
    # WGAN-GP's penalty differentiates D's input gradient: its float32 rounding, which the
    # ranks' half-batch sums order differently, is amplified by Adam over the 6 steps far more
    # than the other losses' (measured with issue 15's SN arithmetic: at most 1.6e-4 on D's
    # weights of size 0.3-0.7, against 1e-6 on G; the rounding order of sigma alone moved it
    # between 4e-6 and 8e-5 before). The ns cases keep 1e-5.
    atol = 5e-4 if loss == "wgan-gp" else 1e-5
    worst = max(_assert_close(a[k], b[k], k, atol) for k in ("G", "D", "G_ema"))
    assert a["data"]["index"] == b["data"]["index"]
    assert torch.equal(a["rng"]["z"], b["rng"]["z"])  # same global latents drawn
    # The training did move the weights (not a comparison of two initial states).
    _, D0 = build_networks(cfg.resolved(), load_run_data(cfg.resolved()))
    init = D0.state_dict()
    moved = max((a["D"][k] - init[k]).abs().max().item() for k in a["D"])
    assert moved > 1e-2, moved
    print(f"B={batch_size} {loss}: max |2 ranks - 1 process| {worst:.1e}, moved {moved:.2f}")


def test_shard_and_loss_weight() -> None:
    # Contiguous chunks covering the batch exactly once, sizes differing by at most one.
    for batch, world in [(32, 2), (31, 2), (10, 4), (7, 7), (64, 3)]:
        rows = [distributed.shard(batch, r, world) for r in range(world)]
        assert rows[0].start == 0 and rows[-1].stop == batch
        assert all(a.stop == b.start for a, b in itertools.pairwise(rows))
        sizes = [s.stop - s.start for s in rows]
        assert max(sizes) - min(sizes) <= 1
        weights = [distributed.loss_weight(batch, r, world) for r in range(world)]
        # DDP averages the ranks' gradients: mean_r(w_r * mean_r) = global mean.
        x = torch.arange(batch, dtype=torch.float64) ** 2
        got = sum(w * x[s].mean() for w, s in zip(weights, rows)) / world
        assert torch.isclose(got, x.mean())
    with pytest.raises(ValueError, match="smaller than the number of ranks"):
        distributed.shard(3, 0, 4)


def test_single_process_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init("cpu")
    assert not ctx.distributed and ctx.is_main and ctx.world == 1
    distributed.check_in_sync(ctx, D=torch.nn.Linear(2, 2))  # a no-op
    assert distributed.any_rank(ctx, True) and not distributed.any_rank(ctx, False)
    assert distributed.broadcast_object(ctx, {"a": 1}) == {"a": 1}
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.device_for("cuda", 3, 4) == torch.device("cuda", 3)
    assert distributed.device_for("cpu", 3, 4) == torch.device("cpu")
    distributed.teardown(ctx)


@pytest.mark.slow
def test_torchrun_cli_and_resume_on_one_process(tmp_path: Path) -> None:
    """torchrun + the CLI on 2 ranks for 4 steps, then the same run resumed in one process
    to 6 steps: the end matches one process that trained 6 steps straight."""
    from normlab.gan.trainer import train

    cfg = _cfg(steps=4, ckpt_every=2, log_every=2)
    run = tmp_path / "run"
    sets = [
        f"{k}={v}"
        for k, v in cfg.to_dict().items()
        if v is not None and k not in ("data", "method", "steps", "loss")
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "normlab",
        "train",
        "--data",
        "ring8",
        "--method",
        "sn",
        "--loss",
        "ns",
        "--steps",
        "4",
        "--out",
        str(run),
        "--no-progress",
        *[a for s in sets for a in ("--set", s)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_command(cmd, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("finished:") == 1, done.stdout  # rank 0 alone reports
    assert _final(run)["step"] == 4

    resumed = train(cfg.replace(steps=6), run, resume=True, progress=False)
    assert resumed["status"] == "finished"
    straight = train(cfg.replace(steps=6), tmp_path / "straight", progress=False)
    assert straight["status"] == "finished"
    a, b = _final(run), _final(tmp_path / "straight")
    assert a["step"] == b["step"] == 6
    for k in ("G", "D", "G_ema"):
        _assert_close(a[k], b[k], k)
