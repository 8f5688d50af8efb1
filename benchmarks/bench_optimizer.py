"""The lab trainer's Adam, fused against per-tensor (foreach), on a whole GAN iteration.

The iteration is the one ``normlab compare``'s default study trains: the ring8 preset's MLPs
(``TrainConfig.preset("ring8")``, the method on D), two D updates and one G update through the
lab's ``d_step_loss`` / ``g_step_loss``, batch 256; ``--data stacked-digits`` times that
preset's CNNs instead (batch 64). Two copies of the same networks train on the
same batches, one with ``Adam(foreach=True)``, one with ``Adam(fused=True)`` (what the trainer
uses), one iteration of each in turn, alternating which goes first. Prints each side's median
ms per iteration, the median over rounds of fused / foreach with its 95% interval, and how far
apart the two copies' parameters are after 10 iterations (the same update up to rounding:
under 1e-6 on ring8) and at the end. GAN training amplifies any rounding difference, as a
change of summation order or thread count does: on ring8 with SN it grows to 1e-3 by
iteration 30 and 0.1 by 45, so a run under fused Adam follows another trajectory, not another
distribution (two foreach copies stay bit-identical).

    python benchmarks/bench_optimizer.py [--data ring8] [--method sn] [--steps 200] [--warmup 20]
                                         [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench_step import median_ci
from normlab.gan import steps
from normlab.gan.config import TrainConfig
from normlab.gan.run import build_networks, load_run_data


class Side:
    """One copy of the networks with its optimizers and its own copy of the batch streams."""

    def __init__(self, G, D, stream, cfg: TrainConfig, **adam) -> None:
        self.G, self.D, self.stream, self.cfg = G, D, stream, cfg
        betas = (cfg.beta1, cfg.beta2)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas, **adam)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas, **adam)
        self.z = torch.Generator().manual_seed(cfg.seed + 1)

    def iteration(self) -> None:
        cfg, G, D = self.cfg, self.G, self.D
        for _ in range(cfg.n_dis):
            real = self.stream.next()
            with torch.no_grad():
                fake = G(torch.randn(cfg.batch_size, cfg.z_dim, generator=self.z))
            loss = steps.d_step_loss(D, D, real, fake, cfg.loss).loss
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=self.z)
        loss_g = steps.g_step_loss(G, D, D, z, cfg.loss)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()


def max_difference(a: Side, b: Side) -> float:
    """The largest relative difference between the two sides' parameters."""
    worst = 0.0
    for net_a, net_b in ((a.G, b.G), (a.D, b.D)):
        for p, q in zip(net_a.parameters(), net_b.parameters()):
            diff = (p - q).abs().max() / q.abs().max().clamp_min(1e-12)
            worst = max(worst, float(diff.detach()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="ring8", help="a preset's data: ring8, stacked-digits")
    parser.add_argument("--method", default="sn")
    parser.add_argument("--steps", type=int, default=200, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig.preset(args.data).replace(method=args.method).resolved()
    data = load_run_data(cfg)
    G, D = build_networks(cfg, data)
    stream = data.stream(cfg.batch_size, seed=cfg.seed)
    sides = {
        "foreach": Side(G, D, stream, cfg, foreach=True),
        "fused": Side(copy.deepcopy(G), copy.deepcopy(D), copy.deepcopy(stream), cfg, fused=True),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    early = float("nan")
    for i in range(args.warmup + args.steps):
        if i == 10:
            early = max_difference(sides["fused"], sides["foreach"])
        for name in list(sides) if i % 2 == 0 else list(sides)[::-1]:
            t0 = time.perf_counter()
            sides[name].iteration()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["fused"], times["foreach"])]
    lo, hi = median_ci(ratios)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.data} preset, method "
        f"{args.method}, batch {cfg.batch_size}, {args.steps} interleaved iterations"
    )
    for name, t in times.items():
        print(f"{name:8s} {1e3 * statistics.median(t):7.2f} ms / iteration")
    print(f"fused / foreach: {statistics.median(ratios):.3f} [{lo:.3f}, {hi:.3f}]")
    print(
        f"largest relative parameter difference after 10 iterations: {early:.2e}; after "
        f"{args.warmup + args.steps}: {max_difference(sides['fused'], sides['foreach']):.2e}"
    )


if __name__ == "__main__":
    main()
