"""DDP on 2 CPU ranks (gloo): power vectors stay in sync, weights match a single process.

The GAN pattern that breaks PyTorch's own spectral_norm under DDP with ``broadcast_buffers``
(the default) is a discriminator called twice, on the real and the fake batch, before one
backward: the buffer broadcast at the second forward overwrites vectors that the first
forward's graph still needs. Here a standard-CNN discriminator under "sn" and "bssn" trains
a few such steps on 2 ranks, each with half the global batch, and then:

* every buffer (the power vectors) is bit-identical on both ranks;
* the weights and vectors equal those of a single-process run on the global batch
  (float tolerance: the ranks' half-batch sums are added in another order).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import normlab as nl
from normlab.gan import distributed
from normlab.gan.models import StandardCNNDiscriminator
from tests._net import free_port, run_ranks

METHODS = ("sn", "bssn")
#: Exact SN learns its vector's shape at the first forward, after DDP has listed the buffers.
EXACT = "sn_exact"
WORLD = 2
STEPS = 4
GLOBAL_BATCH = 8
RESOLUTION = 8

# Several processes form a torch.distributed group: run serially, outside xdist.
pytestmark = pytest.mark.ddp


def _model(method: str) -> torch.nn.Module:
    torch.manual_seed(0)  # same init and power vectors on every rank and in the reference
    model = StandardCNNDiscriminator(resolution=RESOLUTION, channels=1, width=4)
    return nl.apply(model, method)


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (STEPS, GLOBAL_BATCH, 1, RESOLUTION, RESOLUTION)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _train(model: torch.nn.Module, params, real: torch.Tensor, fake: torch.Tensor) -> None:
    """Non-saturating D steps: D(real) and D(fake), then one backward, then Adam."""
    opt = torch.optim.Adam(params, lr=2e-3, betas=(0.0, 0.9))
    for step in range(STEPS):
        loss = F.softplus(-model(real[step])).mean() + F.softplus(model(fake[step])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        real, fake = _batches()
        half = GLOBAL_BATCH // WORLD
        mine = slice(rank * half, (rank + 1) * half)
        for method in (*METHODS, EXACT):
            model = _model(method)
            torch.manual_seed(100 + rank)  # per-rank randomness from here on, as in real runs
            # Default buffer sync: rank 0's buffers are broadcast at every forward
            # (``broadcast_buffers=True``, spelled ``forward_sync_buffers`` since torch 2.13).
            ddp = DistributedDataParallel(model)
            assert ddp.broadcast_buffers and ddp.modules_buffers
            _train(ddp, ddp.parameters(), real[:, mine], fake[:, mine])
            torch.save(model.state_dict(), Path(out_dir) / f"{method}-rank{rank}.pt")
            del ddp  # its reducer must not outlive the group (see leave_group)
    finally:
        distributed.leave_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the 2-rank training once (all methods) and return the folder of state dicts."""
    out = tmp_path_factory.mktemp("ddp")
    start = time.perf_counter()
    run_ranks(_worker, (free_port(), str(out)), nprocs=WORLD)
    print(f"2-rank DDP run, {len(METHODS) + 1} methods: {time.perf_counter() - start:.1f} s")
    return out


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process(ddp_run: Path) -> None:
    tmp_path = ddp_run
    real, fake = _batches()
    for method in METHODS:
        ranks = [
            torch.load(tmp_path / f"{method}-rank{r}.pt", weights_only=True) for r in range(WORLD)
        ]
        buffers = [k for k in ranks[0] if k.endswith((".u0", ".v0", ".u1", ".v1"))]
        # 7 convs + 1 linear, u and v each; bssn: both reshapes of the convs, one of the
        # linear (its transposed reshape is its transpose: the same sigma).
        assert len(buffers) == (30 if method == "bssn" else 16)
        for key in ranks[0]:  # identical on every rank: buffers and weights alike
            assert torch.equal(ranks[0][key], ranks[1][key]), (method, key)

        reference = _model(method)
        _train(reference, reference.parameters(), real, fake)
        expected = reference.state_dict()
        assert expected.keys() == ranks[0].keys()
        worst = 0.0
        for key, value in expected.items():
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5, msg=key)
            worst = max(worst, (ranks[0][key] - value).abs().max().item())
        # The weights did move: the comparison is not between two initial states.
        initial = _model(method).state_dict()
        moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
        assert moved > 1e-3
        print(f"{method}: max |DDP - single process| = {worst:.2e} (weights moved {moved:.2e})")


@pytest.mark.slow
def test_ddp_exact_sn_vectors_in_sync(ddp_run: Path) -> None:
    """Exact SN wrapped in DDP before its first forward (its vector buffer is replaced then,
    from per-rank random numbers): every buffer and weight is still identical on both ranks."""
    ranks = [torch.load(ddp_run / f"{EXACT}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
