"""How much of the speed budget the spectral-norm family's arithmetic alone takes, in place.

The speed targets (issues 2 and 6) give each method a budget over the unnormalized step:
5% / 10% of the D step at batch 64 / 16 (15% for exact SN), 2% of the whole GAN iteration.
This script asks what the least any implementation could cost is: it runs the plain
networks (the standard CNN D and G at 32x32, width 64) with *only the products a method's
math needs* added where they must run, by hooks, each one kernel on the layer's own weight
and gradient, and times that against the same plain networks, interleaved as
``bench_step.py`` does. Left out are applying the coefficient (``W / sigma`` or the output
scaled), normalizing and copying the vectors and all bookkeeping: what ``bench_step.py``
measures above this floor is the cost of those, and of the framework.

Per layer (``M`` the weight as Miyato's ``(out, in * k * k)`` matrix, ``M1`` BSN's
``(in, out * k * k)`` reshape, ``A`` the conv's own linear map on its input shape, ``G``
the weight's gradient):

* sn (ssn is the same arithmetic). First D forward of a training step: the power step
  ``M^T u``, ``M v``. After the backward: ``<G, W>`` and ``G += a u v^T`` in place.
  Forward in eval (G's update through the frozen D): ``sigma = u . M v``.
* bsn (bssn): also ``M1^T u1`` and ``M1 v1`` in the step, both rank-one terms in one pass,
  and ``M1^T u1`` in eval, which the step after an eval pass takes from there.
* sn_exact: the step's ``A v`` (one batch-1 conv, taken from the eval pass after one) and
  ``A^T u`` (the input-gradient conv); after the backward ``<G, W>`` and the weight-gradient
  conv of ``(u, v)`` subtracted in place; in eval the image ``A v``. Linear layers: as sn.

    python benchmarks/bench_floor.py [--batch 64 16] [--steps 30] [--threads 2] [--repeats 1]

``--repeats K`` runs the table K times in new processes and reports the median of the runs'
medians, with its interval across runs (see ``bench_step.py``).
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor, nn

from bench_step import (
    Stepper,
    in_fresh_processes,
    interleaved,
    median_ci,
    median_ci_coverage,
    parse_timing_args,
    timing_header,
    timing_parser,
)
from normlab.reparam._layers import conv_adjoint, conv_args, linear_map, sub_conv_weight_grad_
from normlab.reparam._power import add_both_outers_, add_outer_, as3d, mat_t_vec, mat_vec

#: The targets' budgets over the unnormalized step: D step at batch 64 / 16, and iteration.
D_STEP_TARGET = {64: 1.05, 16: 1.10}
EXACT_D_STEP_TARGET = 1.15
ITERATION_TARGET = 1.02
#: "none" runs the same hooks with no products: the hooks' own cost, the floor's noise floor.
FLOOR_METHODS = ("none", "sn", "bsn", "sn_exact")
#: The rank-one terms go in with this factor: the pass is made, the gradient barely moves.
TINY = 1e-30


def _unit(shape: int | tuple[int, ...]) -> Tensor:
    x = torch.randn(shape)
    return x / x.norm()


class LayerArithmetic:
    """One layer's products for one method, run by hooks on the plain layer."""

    def __init__(self, layer: nn.Module, method: str) -> None:
        if method == "sn_exact" and not isinstance(layer, nn.Conv2d):
            method = "sn"  # exact SN of a Linear layer is SN
        self.method = method
        d0, d1, r = as3d(layer.weight).shape
        self.u, self.v = _unit(d0), _unit(d1 * r)
        self.u1, self.v1 = _unit(d1), _unit(d0 * r)
        self.args = conv_args(layer)
        self.x: Tensor | None = None  # exact SN's vector, shaped like one input
        self.y: Tensor | None = None  # and its image A x
        self.stepped = False  # a training forward took this step's products already
        self.kept = False  # an eval forward left the step's first product
        layer.register_forward_pre_hook(self.forward_products)
        layer.weight.register_post_accumulate_grad_hook(self.backward_products)

    @torch.no_grad()
    def forward_products(self, layer: nn.Module, args: tuple) -> None:
        if self.method == "none":
            return
        w3 = as3d(layer.weight)
        if self.method == "sn_exact" and self.x is None:
            self.x = _unit((1, *args[0].shape[1:]))
        if not layer.training:  # sigma without a step (G's update through D)
            if self.method == "sn_exact":
                self.y = linear_map(layer, layer.weight)(self.x)
            else:
                mat_vec(w3, 0, self.v)
                if self.method == "bsn":
                    mat_t_vec(w3, 1, self.u1)
            self.kept = True
            return
        if self.stepped:  # D(fake) after D(real): one step per backward
            return
        self.stepped = True
        if self.method == "sn_exact":
            if not self.kept:
                self.y = linear_map(layer, layer.weight)(self.x)
            conv_adjoint(self.args, self.y, self.x, layer.weight)
        else:
            mat_t_vec(w3, 0, self.u)
            mat_vec(w3, 0, self.v)
            if self.method == "bsn":
                if not self.kept:
                    mat_t_vec(w3, 1, self.u1)
                mat_vec(w3, 1, self.v1)
        self.kept = False

    @torch.no_grad()
    def backward_products(self, weight: Tensor) -> None:
        self.stepped = False
        if self.method == "none":
            return
        g = weight.grad
        g3 = as3d(g)
        torch.dot(g.view(-1), weight.view(-1))
        if self.method == "sn_exact":
            sub_conv_weight_grad_(g, self.args, self.y, self.x, weight, torch.tensor(TINY))
        elif self.method == "bsn" and 1 < g3.shape[2] < 16:
            add_both_outers_(g3, self.u, self.v, self.u1, self.v1, alpha=TINY)
        else:
            add_outer_(g3, 0, self.u, self.v, alpha=TINY)
            if self.method == "bsn":
                add_outer_(g3, 1, self.u1, self.v1, alpha=TINY)


def probe_and_plain(method: str, batch: int, full: bool) -> tuple[Stepper, Stepper]:
    """The plain networks, and a copy of them with ``method``'s products hooked into D."""
    torch.manual_seed(0)
    plain = Stepper("none", batch, 32, full)
    probe = plain.twin()
    for layer in probe.d.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            LayerArithmetic(layer, method)
    return probe, plain


def floor_ratio(method: str, batch: int, steps: int, warmup: int, full: bool) -> list[float]:
    """Per-round ratios: the plain networks with ``method``'s products over the same without."""
    probe, plain = probe_and_plain(method, batch, full)
    times, _ = interleaved({"probe": probe, "plain": plain}, steps, warmup)
    return [a / b for a, b in zip(times["probe"], times["plain"])]


def floor_medians(methods: list[str], batch: int, steps: int, warmup: int) -> dict:
    """``(method, full) -> median of floor_ratio``: one run of the whole table."""
    return {
        (method, full): statistics.median(floor_ratio(method, batch, steps, warmup, full))
        for method in methods
        for full in (False, True)
    }


def main() -> None:
    parser = timing_parser(__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(FLOOR_METHODS))
    args = parse_timing_args(parser)
    methods = args.methods.split(",")
    for method in methods:
        if method not in FLOOR_METHODS:
            parser.error(f"--methods: {method!r} is not one of {FLOOR_METHODS}")
    print(timing_header(args))
    print("floor = plain networks + the method's products only, x the plain networks")
    for batch in args.batch:
        if args.repeats == 1:
            print(f"\nbatch {batch}: median of per-round ratios (95% CI), and the target")
        else:
            table = in_fresh_processes(
                floor_medians, (methods, batch, args.steps, args.warmup), args.repeats, args.threads
            )
            coverage = median_ci_coverage(args.repeats)
            print(
                f"\nbatch {batch}: median over {args.repeats} runs of their medians of per-round "
                f"ratios ({coverage:.0%} interval across runs), and the target"
            )
        print(f"{'method':10s} {'D step':>22s} {'GAN iteration':>24s}")
        for method in methods:
            d_goal = EXACT_D_STEP_TARGET if method == "sn_exact" else D_STEP_TARGET.get(batch)
            goals = (None, None) if method == "none" else (d_goal, ITERATION_TARGET)
            cells = []
            for full, goal in zip((False, True), goals):
                if args.repeats == 1:
                    ratios = floor_ratio(method, batch, args.steps, args.warmup, full)
                else:
                    ratios = [run[method, full] for run in table]
                lo, hi = median_ci(ratios)
                goal_text = f"<={goal:.2f}" if goal else ""
                cells.append(f"{statistics.median(ratios):.3f} [{lo:.3f},{hi:.3f}] {goal_text}")
            print(f"{method:10s} {cells[0]:>24s} {cells[1]:>24s}", flush=True)


if __name__ == "__main__":
    main()
