"""Time of one discriminator training step under each method, as a ratio to no normalization.

The model is the SNGAN/BSN "standard CNN" discriminator at 32x32x3 (width 64). One
step is what a GAN's D update does: D(real) and D(fake) (the same layers used twice),
the hinge loss, one backward, one Adam step. Methods are timed *interleaved* (one step
of each in turn, repeated) and the median of each is reported, so that a change in the
machine's load hits every method alike. PyTorch's own ``spectral_norm`` and
``weight_norm`` parametrizations are timed on the same model for reference.

    python benchmarks/bench_step.py [--batch 64 16] [--steps 30] [--threads 2]

Targets (issue 2): every normlab method at most 1.05x the unnormalized step at batch 64
and 1.10x at batch 16.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator

#: Baselines from PyTorch itself, applied to every Conv2d/Linear layer.
TORCH_BASELINES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "torch_sn": parametrizations.spectral_norm,
    "torch_wn": parametrizations.weight_norm,
}


def build(method: str, resolution: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    d = StandardCNNDiscriminator(resolution=resolution, channels=3, width=64)
    if method in TORCH_BASELINES:
        for m in list(d.modules()):
            if isinstance(m, nn.Conv2d | nn.Linear):
                TORCH_BASELINES[method](m)
    else:
        nl.apply(d, method)
        if method == "sn_exact":  # the exact norm needs to see the input shape once
            d(torch.zeros(1, 3, resolution, resolution))
    return d


def make_step(d: nn.Module, batch: int, resolution: int) -> Callable[[], None]:
    opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.randn(batch, 3, resolution, resolution)
    fake = torch.randn(batch, 3, resolution, resolution)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.relu(1 - d(real)).mean() + F.relu(1 + d(fake)).mean()
        loss.backward()
        opt.step()

    return step


def measure(methods: list[str], batch: int, steps: int, warmup: int, resolution: int) -> dict:
    steppers = {m: make_step(build(m, resolution), batch, resolution) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(warmup):
        for fn in steppers.values():
            fn()
    for i in range(steps):
        order = methods if i % 2 == 0 else methods[::-1]
        for m in order:
            t0 = time.perf_counter()
            steppers[m]()
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--methods", default=",".join([*nl.METHODS, *TORCH_BASELINES]))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    if "none" not in methods:
        methods.insert(0, "none")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} interleaved steps")
    for batch in args.batch:
        med = measure(methods, batch, args.steps, args.warmup, args.resolution)
        base = med["none"]
        print(f"\nbatch {batch}: median D step, ratio to 'none' and to torch_sn")
        print(f"{'method':10s} {'ms':>8s} {'x none':>8s} {'x torch_sn':>11s}")
        for m in methods:
            rel_sn = f"{med[m] / med['torch_sn']:.3f}" if "torch_sn" in med else "-"
            print(f"{m:10s} {med[m] * 1e3:8.1f} {med[m] / base:8.3f} {rel_sn:>11s}")


if __name__ == "__main__":
    main()
