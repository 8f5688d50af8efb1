"""Time (and peak memory) of GAN training steps under each method, as ratios to no normalization.

The model is the SNGAN/BSN "standard CNN" discriminator at 32x32x3 (width 64). One
step is what a GAN's D update does: D(real) and D(fake) (the same layers used twice),
the hinge loss, one backward, one Adam step. Methods are timed *interleaved* (one step
of each in turn, repeated) and the median of each is reported, so that a change in the
machine's load hits every method alike. PyTorch's own ``spectral_norm`` and
``weight_norm`` parametrizations are timed on the same model for reference.

With ``--full`` the step is a whole GAN iteration: one D update as above, then one G
update through D, with the standard CNN generator (the method on D only for the SN family,
on D and G for eqlr and wn, as the lab does). With ``--memory`` each method runs in a
fresh process and the peak resident memory it reaches is reported (ratio to 'none').

    python benchmarks/bench_step.py [--batch 64 16] [--steps 30] [--threads 2] [--full] [--memory]

Targets (issues 2 and 6): every method's D step at most 1.05x / 1.10x the unnormalized
step at batch 64 / 16 (exact SN at most 1.15x), at most 1.02x on the full GAN iteration,
peak memory at most 1.05x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator, StandardCNNGenerator

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


#: Methods that the lab also puts on the generator.
ON_BOTH_NETWORKS = ("eqlr", "wn")


def build_generator(method: str, resolution: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed + 1)
    g = StandardCNNGenerator(z_dim=128, resolution=resolution, channels=3, width=64)
    if method in ON_BOTH_NETWORKS:
        nl.apply(g, method)
    return g


def make_gan_step(method: str, batch: int, resolution: int) -> Callable[[], None]:
    """One D update and one G update of the hinge-loss GAN, as the lab's trainer runs them."""
    d, g = build(method, resolution), build_generator(method, resolution)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.randn(batch, 3, resolution, resolution)

    def step() -> None:
        with torch.no_grad():
            fake = g(torch.randn(batch, 128))
        opt_d.zero_grad(set_to_none=True)
        (F.relu(1 - d(real)).mean() + F.relu(1 + d(fake)).mean()).backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        (-d(g(torch.randn(batch, 128)))).mean().backward()
        opt_g.step()

    return step


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


def measure(
    methods: list[str], batch: int, steps: int, warmup: int, resolution: int, full: bool = False
) -> dict:
    if full:
        steppers = {m: make_gan_step(m, batch, resolution) for m in methods}
    else:
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


def peak_memory(method: str, batch: int, resolution: int, full: bool, steps: int = 3) -> float:
    """Peak resident memory (MiB) of a fresh process that runs ``steps`` steps of ``method``."""
    code = (
        "import resource, sys, torch; sys.path.insert(0, 'benchmarks'); import bench_step as b;"
        f"torch.set_num_threads(1); f = b.make_gan_step('{method}', {batch}, {resolution}) "
        f"if {full} else b.make_step(b.build('{method}', {resolution}), {batch}, {resolution});"
        f"[f() for _ in range({steps})];"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--methods", default=",".join([*nl.METHODS, *TORCH_BASELINES]))
    parser.add_argument("--full", action="store_true", help="time the whole GAN iteration")
    parser.add_argument("--memory", action="store_true", help="also report peak memory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    if "none" not in methods:
        methods.insert(0, "none")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} interleaved steps")
    if args.full:
        methods = [m for m in methods if m not in TORCH_BASELINES]
    what = "GAN iteration (D + G update)" if args.full else "D step"
    for batch in args.batch:
        med = measure(methods, batch, args.steps, args.warmup, args.resolution, args.full)
        mem = (
            {m: peak_memory(m, batch, args.resolution, args.full) for m in methods}
            if args.memory
            else {}
        )
        base = med["none"]
        print(f"\nbatch {batch}: median {what}, ratio to 'none' and to torch_sn")
        print(
            f"{'method':10s} {'ms':>8s} {'x none':>8s} {'x torch_sn':>11s} "
            f"{'peak MiB':>9s} {'x none':>7s}"
        )
        for m in methods:
            rel_sn = f"{med[m] / med['torch_sn']:.3f}" if "torch_sn" in med else "-"
            mem_cols = (
                f"{mem[m]:9.0f} {mem[m] / mem['none']:7.3f}" if mem else f"{'-':>9s} {'-':>7s}"
            )
            print(f"{m:10s} {med[m] * 1e3:8.1f} {med[m] / base:8.3f} {rel_sn:>11s} {mem_cols}")


if __name__ == "__main__":
    main()
