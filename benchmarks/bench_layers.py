"""Where a method's time goes, layer by layer: each layer's cost over the same plain layer.

Every layer of the standard-CNN discriminator and generator (32x32, width 64) is timed on
its own, as the GAN step uses it: a discriminator layer on two batches (real and fake)
before one backward, inside ``nl.cached()`` (one computed weight, one power step), a
generator layer on one. Each round runs the method's layer and a plain copy with the same
weights back to back, in alternating order; the figure is the median over rounds of the
difference, in ms.

    python benchmarks/bench_layers.py [--method wn] [--batch 16] [--rounds 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import normlab as nl
from normlab.gan.models import StandardCNNDiscriminator, StandardCNNGenerator
from normlab.reparam._layers import is_supported


def standard_cnn_layers(batch: int) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    """``(network, layer, input shape, calls before one backward)`` for each weighted layer
    of the lab's standard CNN D and G, in forward order (shapes recorded from a forward)."""
    found: list[tuple[str, nn.Module, tuple[int, ...], int]] = []
    nets = [
        ("D", StandardCNNDiscriminator(resolution=32, channels=3, width=64), (batch, 3, 32, 32), 2),
        (
            "G",
            StandardCNNGenerator(z_dim=128, resolution=32, channels=3, width=64),
            (batch, 128),
            1,
        ),
    ]
    for name, net, shape, calls in nets:

        def record(layer: nn.Module, inputs: tuple, name: str = name, calls: int = calls) -> None:
            found.append((name, layer, tuple(inputs[0].shape), calls))

        hooks = [m.register_forward_pre_hook(record) for m in net.modules() if is_supported(m)]
        with torch.no_grad():
            net(torch.zeros(shape))
        for h in hooks:
            h.remove()
    return found


def step_fn(layer: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        with nl.cached():
            loss = sum(layer(x).square().mean() for x in inputs)
        loss.backward()
        _sync(inputs[0].device)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_extra_ms(method_step: Callable, plain_step: Callable, rounds: int) -> float:
    for _ in range(5):
        method_step()
        plain_step()
    diffs = []
    for i in range(rounds):  # which one runs first alternates: the second is often faster
        first, second = (method_step, plain_step) if i % 2 == 0 else (plain_step, method_step)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t_first, t_second = t1 - t0, time.perf_counter() - t1
        diffs.append(t_first - t_second if i % 2 == 0 else t_second - t_first)
    return statistics.median(diffs) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="sn", choices=[m for m in nl.METHODS if m != "none"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(
        f"{args.method}, batch {args.batch}, {args.device}, {args.threads} threads: median ms "
        f"over the plain layer per step ({args.rounds} rounds)"
    )
    print(f"{'net':3s} {'layer':34s} {'plain ms':>8s} {'extra ms':>8s}")
    total = 0.0
    for net, layer, shape, calls in standard_cnn_layers(args.batch):
        plain = copy.deepcopy(layer).to(device)
        ours = nl.apply(nn.Sequential(copy.deepcopy(layer)), args.method)[0].to(device)
        inputs = [torch.randn(shape, device=device) for _ in range(calls)]
        if args.method == "sn_exact":
            ours(inputs[0])  # exact SN learns its input shape
        with torch.no_grad():  # the same effective weights (eqlr re-initialises them)
            plain.weight.copy_(ours.weight)
            if plain.bias is not None:
                plain.bias.copy_(ours.bias)
        plain_step = step_fn(plain, inputs)
        t0 = time.perf_counter()
        for _ in range(5):
            plain_step()
        plain_ms = (time.perf_counter() - t0) / 5 * 1e3
        extra = median_extra_ms(step_fn(ours, inputs), plain_step, args.rounds)
        total += extra
        what = f"{type(layer).__name__}{tuple(layer.weight.shape)}"
        print(f"{net:3s} {what:34s} {plain_ms:8.2f} {extra:+8.2f}")
    print(f"{'':3s} {'total':34s} {'':8s} {total:+8.2f}")


if __name__ == "__main__":
    main()
