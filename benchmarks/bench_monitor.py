"""Overhead of ``Monitor.record`` per recorded step, as a fraction of one D training step.

The model is the standard CNN discriminator (32x32x3, width 64) at batch 64; one step is
D(real), D(fake), hinge loss, backward. Prints the median step time, the median time of
one ``record`` and their ratio, per method.

    python benchmarks/bench_monitor.py [--threads 1] [--methods none,sn,bsn,sn_exact] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="none,sn,bsn,sn_exact")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, f = torch.randn(64, 3, 32, 32, device=device), torch.randn(64, 3, 32, 32, device=device)

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    print(f"{'method':10s} {'step ms':>9s} {'record ms':>10s} {'overhead':>9s}")
    for method in args.methods.split(","):
        torch.manual_seed(0)
        d = nl.apply(StandardCNNDiscriminator().to(device), method)
        d(x[:1])

        def step(d=d) -> None:
            d.zero_grad(set_to_none=True)
            with nl.cached():  # D(real), D(fake): one power step, as in one D update
                loss = F.relu(1 - d(x)).mean() + F.relu(1 + d(f)).mean()
            loss.backward()

        step()
        steps, records = [], []
        with nl.diagnostics.Monitor(d) as mon:
            mon.record(0)  # warm-up of the monitor's power vectors
            for i in range(args.steps):
                t0 = now()
                step()
                t1 = now()
                mon.record(i + 1)
                records.append(now() - t1)
                steps.append(t1 - t0)
        s, r = statistics.median(steps), statistics.median(records)
        print(f"{method:10s} {s * 1e3:9.1f} {r * 1e3:10.1f} {r / s:9.1%}")


if __name__ == "__main__":
    main()
