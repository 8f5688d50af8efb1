"""``normlab diagnose``: Lin et al.'s gradient analysis, one short GAN run per method."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    from normlab.experiments.diagnose import DEFAULT_METHODS, DiagnoseConfig

    d = DiagnoseConfig()
    p = sub.add_parser(
        "diagnose",
        help="see exploding/vanishing gradients and the Lipschitz bound per method",
        description=(
            "Train the standard CNN GAN briefly on the bundled 8x8 digits (or --data) under each "
            "method on D, recording per-layer gradient norms, sigmas and input-gradient norms; "
            "write diagnose.json and figures into --out. With --lr-bound also compare the "
            "Fisher-based largest stable learning rate with a measured divergence threshold."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--arch", choices=("cnn", "resnet"), default=d.arch, help="architecture (default cnn)"
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=DEFAULT_METHODS,
        help=f"comma-separated methods on D (default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--steps", type=int, default=d.steps, help=f"D/G steps per method (default {d.steps})"
    )
    p.add_argument(
        "--every", type=int, default=d.every, help=f"record every K steps (default {d.every})"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--width", type=int, default=d.width, help=f"base channels (default {d.width})")
    p.add_argument(
        "--scale", type=float, default=d.scale, help=f"c of ssn/bssn (default {d.scale})"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam rate (default {d.lr})")
    p.add_argument(
        "--data",
        default=d.data,
        help="digits (default), npz:PATH or folder:PATH (square images, side a multiple of 8)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: the models are small, and more threads "
        "only contend; 0 keeps torch's default)",
    )
    p.add_argument(
        "--lr-bound",
        action="store_true",
        help="also: max_stable_lr vs the measured divergence threshold (MLP, CNN, CNN+BN)",
    )
    p.add_argument("--lr-bound-only", action="store_true", help="only the --lr-bound study")
    p.add_argument("--no-figures", action="store_true", help="write diagnose.json only")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study and print a summary table."""
    import torch

    from normlab.experiments import diagnose as study

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    cfg = study.DiagnoseConfig(
        arch=args.arch,
        methods=args.methods,
        steps=args.steps,
        every=args.every,
        batch_size=args.batch_size,
        width=args.width,
        scale=args.scale,
        lr=args.lr,
        seed=args.seed,
        data=args.data,
        device=args.device,
    )
    out: Path = args.out
    result = None
    if not args.lr_bound_only:
        last = {}

        def progress(method: str, step: int) -> None:
            if (
                step == 0
                or step == cfg.steps
                or step - last.get(method, 0) >= max(cfg.steps // 4, 1)
            ):
                last[method] = step
                say(f"  {method}: step {step}/{cfg.steps}")

        result = study.diagnose(out, cfg, progress=progress, figures=not args.no_figures)
        print(
            f"{'method':<10}{'grad spread':>12}{'(init)':>9}{'first layers':>14}{'(init)':>10}"
            f"{'bound':>10}{'(init)':>9}{'max |dD/dx|':>13}{'/ bound':>9}"
        )
        for method, run_ in result["methods"].items():
            s = run_["summary"]
            print(
                f"{method:<10}{s['grad_spread']:>12.3g}{s['grad_spread_init']:>9.3g}"
                f"{s['first_layers_grad']:>14.3g}{s['first_layers_grad_init']:>10.3g}"
                f"{s['bound_max']:>10.3g}{s['bound_init']:>9.3g}"
                f"{s['max_input_grad']:>13.3g}{s['max_bound_ratio']:>9.3g}"
            )
    if args.lr_bound or args.lr_bound_only:
        say("lr bound: sweeping learning rates")
        lrb = study.lr_bound_study(seed=args.seed, progress=None)
        if not args.no_figures:
            from normlab.experiments import diagnose_plots as plots

            out.mkdir(parents=True, exist_ok=True)
            lrb["figure"] = plots.lr_bound_figure(lrb, out)
        print(
            f"{'model':<10}{'lambda_max':>12}{'estimate':>12}{'measured':>12}{'ratio':>8}"
            f"{'lambda_end':>12}{'2(1+mu)/lambda_end':>20}"
        )
        for name, m in lrb["models"].items():
            thr = m["threshold"]
            thr_s = f"{thr:>12.4g}" if math.isfinite(thr) else f"{'none found':>12}"
            print(
                f"{name:<10}{m['lambda_max']:>12.4g}{m['lr_estimate']:>12.4g}{thr_s}{m['ratio']:>8.3g}"
                f"{m.get('lambda_final', math.nan):>12.4g}{m.get('lr_final', math.nan):>20.4g}"
            )
        path = out / "diagnose.json"
        if result is None and path.exists():
            result = json.loads(path.read_text(encoding="utf-8"))
        result = result or {}
        result["lr_bound"] = lrb
        out.mkdir(parents=True, exist_ok=True)
        study.write_json(path, result)
    print(f"wrote {out / 'diagnose.json'}")
    return 0
