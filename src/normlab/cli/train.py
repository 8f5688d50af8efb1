"""``normlab train``: one GAN run into a run folder (config, logs, checkpoints, samples)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

#: Options that set a config key directly: (flag, key, type, help).
_DIRECT = (
    ("--data", "data", str, "ring8, grid25, digits, stacked-digits, folder:/npz:/cifar10:PATH"),
    ("--arch", "arch", str, "mlp, cnn or resnet (default: mlp for 2-D data, cnn for images)"),
    ("--method", "method", str, "normalization method (none, sn, bssn, eqlr, wn, ...)"),
    ("--scale", "scale", float, "the constant c of ssn/bssn"),
    ("--loss", "loss", str, "hinge, ns or wgan-gp"),
    ("--steps", "steps", int, "generator steps"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "cpu, cuda, ... (under torchrun: cuda = each rank's GPU)"),
    (
        "--precision",
        "precision",
        str,
        "fp32 (default); bf16 or fp16 (CUDA): forwards under autocast, fp32 master weights",
    ),
    (
        "--inception-weights",
        "inception_weights",
        str,
        "pytorch-fid's Inception-v3 weights file: image metrics on its features",
    ),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one GAN",
        description=(
            "Train one GAN into a run folder. Settings come from --config (without it: the "
            "preset of the data, see configs/, or the paper's defaults), then the options below, "
            "then --set key=value (any config key). "
            "Example: normlab train --data digits --arch cnn --method bssn --scale 1.2 "
            "--steps 3000 --out runs/d1"
        ),
    )
    for flag, key, typ, help_ in _DIRECT:
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (required unless --resume RUN)"
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key (repeatable)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue the run in --out (or RUN) from its newest good checkpoint",
    )
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const=True,
        default=None,
        help="torch.compile the training forwards of D and G",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The config the arguments ask for (a resumed run starts from its own config.yaml)."""
    from normlab.gan.config import TrainConfig
    from normlab.gan.run import CONFIG_FILE

    out = args.out
    resume = args.resume
    if isinstance(resume, str):
        if out is not None and Path(resume) != out:
            raise ValueError(f"--resume {resume} and --out {out} name different folders")
        out = Path(resume)
    if out is None:
        raise ValueError("--out DIR is required (the run folder)")
    if resume and (out / CONFIG_FILE).exists():
        if args.config is not None:
            raise ValueError("--config cannot be combined with --resume of an existing run")
        cfg = TrainConfig.from_file(out / CONFIG_FILE)
    elif args.config is not None:
        cfg = TrainConfig.from_file(args.config)
    else:  # the tuned preset of the data (ring8, grid25, digits), else the paper's defaults
        cfg = TrainConfig.preset(args.data or TrainConfig().data)
    direct = {key: getattr(args, key) for _, key, _, _ in _DIRECT if getattr(args, key) is not None}
    if getattr(args, "compile", None):
        direct["compile"] = True
    if direct:
        cfg = cfg.replace(**direct)
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    return cfg, out, bool(resume)


def run(args: argparse.Namespace) -> int:
    from normlab.cli._signals import graceful_stop
    from normlab.gan.distributed import launched_by_torchrun
    from normlab.gan.trainer import train

    cfg, out, resume = build_config(args)
    if launched_by_torchrun():  # the ranks must stop together: torchrun's signals end them
        result = train(cfg, out, resume=resume, progress=not args.no_progress)
    else:  # Ctrl-C / SIGTERM: a checkpoint at the step reached, then exit 130 / 143
        with graceful_stop("the run") as request:
            result = train(
                cfg, out, resume=resume, progress=not args.no_progress, stop=request.event.is_set
            )
        if result["status"] == "interrupted":
            print(
                f"normlab train: interrupted by {request.name} at step {result['steps']} of "
                f"{cfg.steps}; a checkpoint of that step is in {out}. Resume with:\n"
                f"  normlab train --resume {out}",
                file=sys.stderr,
            )
            return request.exit_code
    if int(os.environ.get("RANK", "0") or 0) != 0:  # torchrun: rank 0 reports
        return 0 if result["status"] == "finished" else 3
    metrics = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["metrics"].items()
    )
    print(
        f"{result['status']}: {result['steps']} steps in {result['wall_time']:.1f} s "
        f"({result['steps_per_sec']:.0f} steps/s) -> {out}"
    )
    if result["divergence"]:
        d = result["divergence"]
        print(
            f"diverged at step {d['step']}: {d['layer'] or 'loss'} {d['quantity']} "
            f"= {d['value']:g}",
            file=sys.stderr,
        )
    print(f"metrics: {metrics or '(none)'}")
    note = _image_metric_note(out)
    if note:
        print(f"  ({note})")
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 0 if result["status"] == "finished" else 3


def _image_metric_note(run_dir: Path) -> str:
    """The feature space and scale of FID/KID as the run's metrics.json states them."""
    from normlab.gan.evaluate import image_metric_note
    from normlab.gan.run import METRICS_FILE

    try:
        stored = json.loads((Path(run_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return image_metric_note(stored.get("metric_info") or {})
