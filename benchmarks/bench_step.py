"""Time and peak memory of GAN training steps under each method, as ratios to no normalization.

The model is the SNGAN/BSN "standard CNN" discriminator at 32x32x3 (width 64). One
step is what a GAN's D update does: D(real) and D(fake) (the same layers used twice),
the hinge loss, one backward, one Adam step. Each method is timed *interleaved* with
its twin: a copy of the same networks with the reparameterization baked into plain
weights (``normlab.remove``), trained on the same batches (one step of each in turn,
repeated). The ratio is the median over those rounds of the method's time over its
twin's in the same round: the method's own cost, on the same data and the same starting
weights, and robust to the machine's speed drifting during the run. The 'none' row (a
plain network against its copy) shows the noise floor.
PyTorch's own ``spectral_norm`` and ``weight_norm`` parametrizations are timed on the
same model for reference.

With ``--full`` the step is a whole GAN iteration as the lab's trainer runs it: one D
update as above, then one G update through D frozen and in eval mode, with
the standard CNN generator (the method on D only for the SN family, on D and G for eqlr
and wn, as the lab does). With ``--memory`` the peak of tensor memory is reported too:
what the parameters, gradients and optimizer state hold before a step plus the highest
point the step's own allocations reach, from PyTorch's profiler (the allocator's
records, not the process's resident size, which the allocator's caching blurs).

    python benchmarks/bench_step.py [--batch 64 16] [--steps 30] [--threads 2] [--full] [--memory]
                                    [--parts] [--ops] [--repeats 1] [--arch cnn|mlp]
                                    [--device cpu|cuda]

``--arch mlp`` times the lab's ring8 GAN instead (MLPs of 4 Linear layers of 64 units, 2-D
data, batch as given: the lab uses 256), where a method's fixed cost per layer call shows.

With ``--repeats K`` the whole measurement runs K times, each in a new Python process (one
after another), and each figure is the median of the K runs' figures, with the interval of
that median *across runs*. A run's own interval covers the noise between its rounds, but
not what stays fixed for a process's lifetime (where the allocator put the tensors, which
cache sets they share) or drifts over minutes: on the 2-core machine two runs of 100 rounds
gave exact SN 1.160 [1.140, 1.179] and 1.112 [1.104, 1.121]. Six runs give an interval of at
least 95% coverage (their range).

With ``--parts`` it also prints, per part of the step (G's no-grad pass that makes the fake
batch, the D update, the G update), the median over rounds of the method's ms minus its
twin's: which update a method's cost comes from. With ``--ops`` it counts the operators one
step runs (``torch.profiler``) against the twin's step, with the kinds the method adds most.

Targets (issue 15): on the standard CNN's D step no worse than 2 points above issue 2's
figures (sn 1.04 / 1.08, bsn 1.05 / 1.11 at batch 64 / 16); on the ring8 MLP GAN's full
iteration every SN-family method at most PyTorch's spectral_norm, aiming at 1.15x plain.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import normlab as nl
from normlab.gan import steps
from normlab.gan.models import (
    MLPDiscriminator,
    MLPGenerator,
    StandardCNNDiscriminator,
    StandardCNNGenerator,
)
from normlab.reparam import is_reparametrized

#: Baselines from PyTorch itself, applied to every Conv2d/Linear layer.
TORCH_BASELINES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "torch_sn": parametrizations.spectral_norm,
    "torch_wn": parametrizations.weight_norm,
}


#: The networks each ``--arch`` times: the SNGAN/BSN standard CNN on 32x32x3 images
#: (width 64), or the lab's ring8 MLP GAN (3 hidden layers of 64: 4 Linear layers each).
ARCHS = ("cnn", "mlp")
MLP_WIDTH, MLP_Z = 64, 16


def _input_shape(arch: str, resolution: int) -> tuple[int, ...]:
    return (2,) if arch == "mlp" else (3, resolution, resolution)


def build(
    method: str,
    resolution: int,
    seed: int = 0,
    arch: str = "cnn",
    device: str | torch.device = "cpu",
) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "mlp":
        d = MLPDiscriminator(2, width=MLP_WIDTH, depth=3)
    else:
        d = StandardCNNDiscriminator(resolution=resolution, channels=3, width=64)
    d = d.to(device)
    if method in TORCH_BASELINES:
        for m in list(d.modules()):
            if isinstance(m, nn.Conv2d | nn.Linear):
                TORCH_BASELINES[method](m)
    else:
        nl.apply(d, method)
        if method == "sn_exact":  # the exact norm needs to see the input shape once
            d(torch.zeros(1, *_input_shape(arch, resolution), device=device))
    return d


#: Methods that the lab also puts on the generator.
ON_BOTH_NETWORKS = tuple(m for m in nl.METHODS if m != "none" and not nl.REGISTRY[m].d_only)


def build_generator(
    method: str,
    resolution: int,
    seed: int = 0,
    arch: str = "cnn",
    device: str | torch.device = "cpu",
) -> nn.Module:
    torch.manual_seed(seed + 1)
    if arch == "mlp":
        g = MLPGenerator(MLP_Z, 2, MLP_WIDTH, 3)
    else:
        g = StandardCNNGenerator(z_dim=128, resolution=resolution, channels=3, width=64)
    g = g.to(device)
    if method in ON_BOTH_NETWORKS:
        nl.apply(g, method)
    return g


@torch.no_grad()
def bake_into(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copy ``src``'s effective weights into ``dst``, the same architecture built plain.

    (Not ``copy.deepcopy`` + ``remove_parametrizations``: a deep copy of a torch-
    parametrized module shares its generated class, which the removal then edits.)
    """
    for name, md in dst.named_modules():
        if next(md.children(), None) is not None:
            continue  # containers: their leaves are copied one by one
        ms = src.get_submodule(name)
        if not (is_reparametrized(ms) or parametrize.is_parametrized(ms)):
            md.load_state_dict(ms.state_dict())
            continue
        was_training = ms.training
        ms.eval()  # read without a power-iteration step
        md.weight.copy_(ms.weight)
        if ms.bias is not None:
            md.bias.copy_(ms.bias)
        ms.train(was_training)
    return dst


#: The timed parts of a full GAN iteration (a D step alone is one part, the D update).
PARTS = ("G's no-grad pass (fake batch)", "D update", "G update through frozen D")


class Stepper:
    """One method's networks, optimizers and batch; ``step()`` runs one training step."""

    def __init__(
        self,
        method: str,
        batch: int,
        resolution: int,
        full: bool,
        twin_of: Stepper | None = None,
        arch: str = "cnn",
        device: str = "cpu",
    ) -> None:
        if twin_of is not None:
            arch, device = twin_of.arch, twin_of.device
        self.arch, self.device = arch, torch.device(device)
        device = self.device
        #: On CUDA, wait for the device before each time mark (off: a step with no host sync).
        self.sync = self.device.type == "cuda"
        shape = (batch, *_input_shape(arch, resolution))
        if twin_of is None:
            self.d = build(method, resolution, arch=arch, device=device)
            self.g = build_generator(method, resolution, arch=arch, device=device) if full else None
            self.real = torch.randn(shape).to(device)
            self.fake = None if full else torch.randn(shape).to(device)
        else:  # the same networks, baked, on the same batches
            self.d = bake_into(twin_of.d, build("none", resolution, arch=arch, device=device))
            self.g = (
                None
                if twin_of.g is None
                else bake_into(
                    twin_of.g, build_generator("none", resolution, arch=arch, device=device)
                )
            )
            self.real, self.fake = twin_of.real, twin_of.fake
        self.batch, self.resolution = batch, resolution
        self.z_dim = MLP_Z if arch == "mlp" else 128
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_g = (
            None
            if self.g is None
            else torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        )
        self.seed = 1234  # both twins draw the same latents

    def twin(self) -> Stepper:
        """The same networks with the reparameterization baked into plain weights."""
        return Stepper("none", self.batch, self.resolution, self.g is not None, twin_of=self)

    def step(self) -> None:
        """One step; ``self.parts`` then holds the seconds of its parts (see ``PARTS``).

        The D update runs D(real) and D(fake) inside ``nl.cached()``: one power step and one
        computed weight per layer for both (what a GAN loop that calls D twice should do; the
        lab's trainer runs D once on both batches instead). The G update runs D frozen and in
        eval mode through the lab's own ``g_step_loss``.
        """
        d, opt_d = self.d, self.opt_d
        gen = torch.Generator().manual_seed(self.seed)
        self.seed += 1
        marks = [self._now()]
        if self.g is None:
            fake = self.fake
        else:
            with torch.no_grad():
                fake = self.g(torch.randn(self.batch, self.z_dim, generator=gen).to(self.device))
            marks.append(self._now())
        opt_d.zero_grad(set_to_none=True)
        with nl.cached():
            loss = F.relu(1 - d(self.real)).mean() + F.relu(1 + d(fake)).mean()
        loss.backward()
        opt_d.step()
        marks.append(self._now())
        if self.g is not None:
            self.opt_g.zero_grad(set_to_none=True)
            z = torch.randn(self.batch, self.z_dim, generator=gen).to(self.device)
            steps.g_step_loss(self.g, d, d, z, "hinge").backward()
            self.opt_g.step()
            marks.append(self._now())
        self.parts = [b - a for a, b in itertools.pairwise(marks)]

    def _now(self) -> float:
        """The time, after the device has finished what was queued (CUDA runs async)."""
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def persistent_bytes(self) -> int:
        """Bytes of parameters, gradients, buffers and optimizer state (distinct storages)."""
        storages: dict[int, int] = {}
        modules = [m for m in (self.d, self.g) if m is not None]
        optimizers = [o for o in (self.opt_d, self.opt_g) if o is not None]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        tensors += [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        tensors += [
            t
            for o in optimizers
            for st in o.state.values()
            for t in st.values()
            if isinstance(t, torch.Tensor)
        ]
        for t in tensors:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def peak_bytes(self) -> int:
        """Persistent bytes plus the highest point of one step's own allocations."""
        for opt in (self.opt_d, self.opt_g):
            if opt is not None:
                opt.zero_grad(set_to_none=True)  # the step starts without gradients
        base = self.persistent_bytes()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            self.step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        return base + peak


def op_counts(stepper: Stepper) -> Counter:
    """How many times each operator runs in one step (``torch.profiler``'s names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        stepper.step()
    return Counter({e.key: e.count for e in prof.key_averages()})


def extra_ops(
    method: str, batch: int, resolution: int, full: bool, arch: str = "cnn", device: str = "cpu"
) -> tuple[int, int, Counter]:
    """``(ops of one step, ops of its twin's step, what the method adds per operator)``."""
    torch.manual_seed(0)
    st = Stepper(method, batch, resolution, full, arch=arch, device=device)
    twin = st.twin()
    for _ in range(2):
        st.step()
        twin.step()
    mine, base = op_counts(st), op_counts(twin)
    added = Counter({k: mine[k] - base[k] for k in mine | base if mine[k] != base[k]})
    return sum(mine.values()), sum(base.values()), added


def _median_rank(n: int, confidence: float) -> int:
    """The largest ``j`` with ``P(Binomial(n, 1/2) <= j) <= (1 - confidence) / 2`` (else 0)."""
    j, below = 0, 0.0
    for i in range(n // 2):
        below += math.comb(n, i) / 2**n  # P(B <= i)
        if below > (1 - confidence) / 2:
            break
        j = i
    return j


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median, ``[x_(j), x_(n-1-j)]`` (sorted,
    0-based) with ``j`` the largest index such that ``P(Binomial(n, 1/2) <= j) <= (1 - c) / 2``
    (the full range where no index qualifies: see ``median_ci_coverage``)."""
    xs, n = sorted(values), len(values)
    j = _median_rank(n, confidence)
    return xs[j], xs[n - 1 - j]


def median_ci_coverage(n: int, confidence: float = 0.95) -> float:
    """The probability that ``median_ci`` of ``n`` values covers the median,
    ``1 - 2 P(Binomial(n, 1/2) <= j)``: at least ``confidence`` from n = 6 on, less below."""
    j = _median_rank(n, confidence)
    return 1 - 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2**n


def _run_with_threads(threads: int, fn: Callable[..., Any], args: tuple) -> Any:
    torch.set_num_threads(threads)
    return fn(*args)


def in_fresh_processes(fn: Callable[..., Any], args: tuple, repeats: int, threads: int) -> list:
    """``[fn(*args)]`` once per repeat, each in a new Python process (spawned, one at a time,
    with ``threads`` threads); with one repeat, in this process. ``fn`` must be importable
    (a module-level function of the script or of this module)."""
    if repeats == 1:
        return [fn(*args)]
    context = multiprocessing.get_context("spawn")
    results = []
    for _ in range(repeats):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(_run_with_threads, threads, fn, args).result())
    return results


def interleaved(
    pair: dict[str, Stepper], steps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """Steps of both steppers in turn, in alternating order, after ``warmup`` untimed rounds.

    Returns ``(name -> seconds of each step, name -> seconds of each step's parts)``.
    """
    times: dict[str, list[float]] = {k: [] for k in pair}
    parts: dict[str, list[list[float]]] = {k: [] for k in pair}
    for _ in range(warmup):
        for st in pair.values():
            st.step()
    for i in range(steps):
        order = list(pair) if i % 2 == 0 else list(pair)[::-1]
        for k in order:
            t0 = pair[k]._now()
            pair[k].step()
            times[k].append(pair[k]._now() - t0)
            parts[k].append(pair[k].parts)
    return times, parts


def measure(
    methods: list[str],
    batch: int,
    steps: int,
    warmup: int,
    resolution: int,
    full: bool = False,
    arch: str = "cnn",
    device: str = "cpu",
) -> tuple[dict, dict, dict, dict, dict]:
    """Each method interleaved with its baked twin, one step of each per round.

    Returns ``(method -> median seconds, method -> its twin's median seconds,
    method -> median over rounds of the method's time / the twin's, method -> that
    median's 95% confidence interval, method -> per part of the step (``PARTS``) the
    median over rounds of the method's seconds minus the twin's)``.
    """
    med, base, ratio, interval, extra = {}, {}, {}, {}, {}
    for m in methods:
        torch.manual_seed(0)
        first = Stepper(m, batch, resolution, full, arch=arch, device=device)
        times, parts = interleaved({m: first, "twin": first.twin()}, steps, warmup)
        med[m] = statistics.median(times[m])
        base[m] = statistics.median(times["twin"])
        ratios = [a / b for a, b in zip(times[m], times["twin"])]
        ratio[m] = statistics.median(ratios)
        interval[m] = median_ci(ratios)
        extra[m] = [
            statistics.median(a[i] - b[i] for a, b in zip(parts[m], parts["twin"]))
            for i in range(len(parts[m][0]))
        ]
    return med, base, ratio, interval, extra


def combine_runs(
    runs: list[tuple[dict, dict, dict, dict, dict]],
) -> tuple[dict, dict, dict, dict, dict]:
    """``measure``'s results of several runs as one: each figure the median over the runs, each
    method's interval that of the median of its runs' ratios (one run: returned as it is)."""
    if len(runs) == 1:
        return runs[0]
    methods = runs[0][2]
    med = {m: statistics.median(r[0][m] for r in runs) for m in methods}
    base = {m: statistics.median(r[1][m] for r in runs) for m in methods}
    ratio = {m: statistics.median(r[2][m] for r in runs) for m in methods}
    interval = {m: median_ci([r[2][m] for r in runs]) for m in methods}
    extra = {
        m: [statistics.median(r[4][m][i] for r in runs) for i in range(len(runs[0][4][m]))]
        for m in methods
    }
    return med, base, ratio, interval, extra


def peak_memory(
    method: str, batch: int, resolution: int, full: bool, arch: str = "cnn", device: str = "cpu"
) -> float:
    """Peak tensor memory (MiB) of one step of ``method`` (after two warm-up steps)."""
    torch.manual_seed(0)
    st = Stepper(method, batch, resolution, full, arch=arch, device=device)
    st.step()
    st.step()
    return st.peak_bytes() / 2**20


def timing_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options of every timing script here: batches, rounds, warm-up rounds,
    threads and repeats (``parse_timing_args`` checks them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs, each in a new process (medians across them)"
    )
    return parser


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser``'s arguments, with ``--repeats`` checked and the thread count set."""
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    return args


def timing_header(args: argparse.Namespace) -> str:
    """The first line a timing script prints: torch, threads, rounds and runs."""
    runs = f", {args.repeats} runs in fresh processes" if args.repeats > 1 else ""
    return (
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, "
        f"{args.steps} interleaved steps{runs}"
    )


def main() -> None:
    parser = timing_parser(__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument(
        "--arch", choices=ARCHS, default="cnn", help="standard CNN (default) or the ring8 MLP GAN"
    )
    parser.add_argument("--methods", default=",".join([*nl.METHODS, *TORCH_BASELINES]))
    parser.add_argument("--full", action="store_true", help="time the whole GAN iteration")
    parser.add_argument("--memory", action="store_true", help="also report peak memory")
    parser.add_argument(
        "--parts", action="store_true", help="also report each part's ms over the twin (--full)"
    )
    parser.add_argument(
        "--ops", action="store_true", help="also count the operators a step runs, against the twin"
    )
    args = parse_timing_args(parser)
    methods = args.methods.split(",")
    if "none" not in methods:
        methods.insert(0, "none")
    print(timing_header(args))
    what = "GAN iteration (D + G update)" if args.full else "D step"
    for batch in args.batch:
        runs = in_fresh_processes(
            measure,
            (
                methods,
                batch,
                args.steps,
                args.warmup,
                args.resolution,
                args.full,
                args.arch,
                args.device,
            ),
            args.repeats,
            args.threads,
        )
        med, base, ratio, interval, extra = combine_runs(runs)
        mem = (
            {
                m: peak_memory(m, batch, args.resolution, args.full, args.arch, args.device)
                for m in methods
            }
            if args.memory
            else {}
        )
        if args.repeats == 1:
            print(
                f"\nbatch {batch}: median {what}; x twin = median of per-round ratios "
                "(95% CI of that median)"
            )
            ci = "95% CI"
        else:
            coverage = median_ci_coverage(args.repeats)
            print(
                f"\nbatch {batch}: median {what} over {args.repeats} runs; x twin = median of the "
                f"runs' medians of per-round ratios ({coverage:.0%} interval across runs)"
            )
            ci = f"{coverage:.0%} CI"
        print(
            f"{'method':10s} {'ms':>8s} {'twin ms':>8s} {'x twin':>7s} {ci:>13s} "
            f"{'x torch_sn':>11s} "
            f"{'peak MiB':>9s} {'x none':>7s}"
        )
        for m in methods:
            rel_sn = f"{ratio[m] / ratio['torch_sn']:.3f}" if "torch_sn" in ratio else "-"
            mem_cols = (
                f"{mem[m]:9.1f} {mem[m] / mem['none']:7.3f}" if mem else f"{'-':>9s} {'-':>7s}"
            )
            print(
                f"{m:10s} {med[m] * 1e3:8.1f} {base[m] * 1e3:8.1f} {ratio[m]:7.3f} "
                f"{interval[m][0]:6.3f}-{interval[m][1]:6.3f} {rel_sn:>11s} {mem_cols}"
            )
        if args.ops:
            print(f"\nbatch {batch}: operators run by one step (torch.profiler), against the twin")
            for m in methods:
                mine, base, added = extra_ops(
                    m, batch, args.resolution, args.full, args.arch, args.device
                )
                top = ", ".join(f"{k} {n:+d}" for k, n in added.most_common(5))
                print(f"{m:10s} {mine:6d} against {base:6d} ({mine - base:+d}): {top}")
        if args.parts:
            names = PARTS if args.full else PARTS[1:2]
            print(f"\nbatch {batch}: median over rounds of ms over the twin, per part")
            print(f"{'method':10s} " + " ".join(f"{n:>30s}" for n in names))
            for m in methods:
                print(f"{m:10s} " + " ".join(f"{x * 1e3:+30.2f}" for x in extra[m]))


if __name__ == "__main__":
    main()
