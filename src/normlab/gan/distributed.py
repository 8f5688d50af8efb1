"""Data-parallel training under ``torchrun``: the process group and the rules of the split.

``normlab train`` started by ``torchrun --nproc_per_node=N -m normlab train ...`` finds the
variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group with the backend the device asks for: ``nccl``
for CUDA (rank ``r`` of a node uses ``cuda:LOCAL_RANK``), ``gloo`` for the CPU. Started any
other way (``WORLD_SIZE`` unset or 1) nothing changes: one process, no group.

The rules (what ``normlab.gan.trainer`` does with these helpers):

* **One global batch, cut in contiguous chunks.** Every rank draws the *same* global batch
  (real data and latents, from generators seeded identically on every rank) and keeps its
  chunk ``shard(batch_size, rank, world)``: rows ``[r*B//N, (r+1)*B//N)``. When ``N`` does
  not divide ``B`` the chunks differ by one row; each rank's loss is then weighted by
  ``loss_weight`` (``N * b_r / B``), so that DDP's average of the ranks' gradients is
  exactly the gradient of the mean over the global batch. A run on ``N`` ranks therefore
  computes what one process computes on the same global batch (up to the order in which
  float sums are added), and ``B >= N`` is required.
* **Identical models, different data.** Networks are built from ``cfg.seed`` on every rank
  (DDP also broadcasts rank 0's parameters and buffers when it wraps them); the global RNGs
  are seeded ``seed + rank`` (``seed_rank``), so anything drawn from them differs per rank.
* **Rank 0 writes.** Logs, checkpoints, samples, metrics and reports come from rank 0;
  decisions that stop the loop are taken on values every rank shares (the global batch's
  losses, ``mean_over_ranks``) or are rank 0's, sent to all (``broadcast_object``), so no
  rank waits forever for another one that stopped. At every checkpoint ``check_in_sync``
  verifies that all ranks hold the same parameters and buffers, bit for bit.
* **WGAN-GP** draws one interpolation weight per row of the global batch; each rank uses
  its rows' (it skips the others' draws), so the penalty matches one process too.
* **Checkpoints hold the unwrapped modules** and the global data position, so a run
  written by ``N`` ranks resumes on ``M`` (1 included), and a single-process checkpoint
  resumes on ``N`` ranks.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Seconds a rank waits at a collective before giving up (rank 0 may evaluate meanwhile);
#: override with the environment variable ``NORMLAB_DIST_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world``, its device, the group's backend."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    #: Whether ``init`` created the process group (``teardown`` then destroys it).
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_by_torchrun() -> bool:
    return env_world_size() > 1 and "RANK" in os.environ


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(requested: str, local_rank: int, world: int) -> torch.device:
    """The device of this rank: ``cuda`` / ``cuda:K`` become ``cuda:LOCAL_RANK`` on N ranks."""
    device = torch.device(requested)
    if world > 1 and device.type == "cuda":
        return torch.device("cuda", local_rank)
    return device


def init(requested_device: str = "cpu") -> Context:
    """Join the process group torchrun describes (once); a single process returns rank 0 of 1.

    Safe to call when a group already exists (e.g. a caller initialised it): that group and
    its backend are used.
    """
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Context(device=torch.device(requested_device))
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        world = dist.get_world_size()
        rank = dist.get_rank()
    else:
        rank = int(os.environ["RANK"])
    device = device_for(requested_device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        timeout = int(os.environ.get("NORMLAB_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        dist.init_process_group(
            backend_for(device),
            timeout=datetime.timedelta(seconds=timeout),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return Context(
        rank=rank,
        world=world,
        local_rank=local_rank,
        device=device,
        backend=dist.get_backend(),
        owns_group=owns_group,
    )


#: Seconds to sleep (GIL released) between the last barrier and destroying the group.
#: A gloo worker thread frees each finished work item, which takes the GIL; the group's
#: destructor joins those threads while holding the GIL, so a thread still freeing one
#: deadlocks both (seen with torch 2.13 at the end of DDP runs). The pause lets them finish.
DRAIN_S = 0.2


def teardown(ctx: Context) -> None:
    """Leave the process group ``init`` created (after a barrier); a no-op otherwise."""
    if ctx.owns_group and dist.is_initialized():
        leave_group(ctx.device)


def leave_group(device: torch.device | None = None) -> None:
    """Barrier, let the backend's threads go idle, destroy the default process group.

    Call it after every DistributedDataParallel wrapper is gone (its reducer holds the
    group too, and freeing the last reference later joins the threads with the GIL held).
    """
    try:
        if device is not None and device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()
        time.sleep(DRAIN_S)
    finally:
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def shard(batch_size: int, rank: int, world: int) -> slice:
    """The rows of the global batch that rank ``rank`` of ``world`` trains on (contiguous)."""
    if batch_size < world:
        raise ValueError(
            f"batch_size={batch_size} is smaller than the number of ranks ({world}): every "
            f"rank needs at least one row of the global batch; raise batch_size"
        )
    return slice(rank * batch_size // world, (rank + 1) * batch_size // world)


def loss_weight(batch_size: int, rank: int, world: int) -> float:
    """``world * b_r / batch_size``: the factor on rank ``r``'s mean loss that makes DDP's
    gradient average the gradient of the global batch's mean (1.0 when ``world`` divides it)."""
    s = shard(batch_size, rank, world)
    return world * (s.stop - s.start) / batch_size


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch's, numpy's and python's global generators with ``seed + rank``."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)  # noqa: NPY002
    random.seed(seed + rank)


def wrap(module: nn.Module, ctx: Context, **kwargs: Any) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` on ``ctx``'s device (itself when not
    distributed). Buffers are broadcast from rank 0 at every forward (PyTorch's default)."""
    if not ctx.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def mean_over_ranks(ctx: Context, values: Tensor) -> Tensor:
    """The mean over ranks of ``values`` (a new tensor; ``values`` unchanged)."""
    out = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= ctx.world
    return out


def any_rank(ctx: Context, flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(ctx: Context, obj: Any = None, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled: only between this job's own ranks)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def check_sync_bn(ctx: Context, enabled: bool) -> None:
    """``sync_bn`` needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)."""
    if enabled and ctx.distributed and ctx.device.type != "cuda":
        raise ValueError(
            "sync_bn=true needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU. "
            "On CPU ranks BatchNorm uses each rank's own chunk of the batch (sync_bn=false)"
        )


def convert_sync_bn(module: nn.Module, ctx: Context, enabled: bool) -> nn.Module:
    """``module`` with every BatchNorm made a ``SyncBatchNorm`` (when ``enabled`` on N ranks)."""
    check_sync_bn(ctx, enabled)
    if enabled and ctx.distributed:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def broadcast_buffers(ctx: Context, module: nn.Module) -> None:
    """Every buffer of ``module`` (BatchNorm statistics, power vectors) set to rank 0's."""
    if ctx.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def check_in_sync(ctx: Context, **modules: nn.Module) -> None:
    """Raise ``RuntimeError`` naming the first tensor (parameter or buffer, power vectors
    included) of ``modules`` that differs, bit for bit, from rank 0's. One broadcast of the
    concatenated tensors: called at checkpoints, it costs about one model copy."""
    if not ctx.distributed:
        return
    names, flat = [], []
    for prefix, module in modules.items():
        for key, t in module.state_dict().items():
            if t.is_floating_point():
                names.append((f"{prefix}.{key}", t.numel()))
                flat.append(t.detach().reshape(-1).to(ctx.device, torch.float64))
    mine = torch.cat(flat) if flat else torch.zeros(0, device=ctx.device, dtype=torch.float64)
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    differs = ~((mine == ref) | (mine.isnan() & ref.isnan()))
    bad = differs.nonzero()
    first = int(bad[0, 0]) if bad.numel() else -1
    worst = torch.tensor([first], device=ctx.device, dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if worst.item() < 0:
        return
    where, offset = "?", 0
    pos = first if first >= 0 else int(worst.item())
    for name, n in names:
        if pos < offset + n:
            where = name
            break
        offset += n
    raise RuntimeError(
        f"the ranks are out of sync: {where} differs from rank 0's (rank {ctx.rank} of "
        f"{ctx.world}); every rank must build the same networks and see the same updates"
    )


@contextmanager
def main_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (e.g. to build a shared cache)."""
    if not ctx.is_main:
        barrier(ctx)
    try:
        yield
    finally:
        if ctx.is_main:
            barrier(ctx)


__all__ = [
    "Context",
    "any_rank",
    "backend_for",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "check_in_sync",
    "check_sync_bn",
    "convert_sync_bn",
    "device_for",
    "env_world_size",
    "init",
    "launched_by_torchrun",
    "leave_group",
    "loss_weight",
    "main_first",
    "mean_over_ranks",
    "seed_rank",
    "shard",
    "teardown",
    "unwrap",
    "wrap",
]
