"""``normlab inspect``: per-layer effective spectral norms of a discriminator under each method.

For the SNGAN/BSN standard CNN discriminator, prints for every weighted layer the
spectral norm of the effective weight's ``(out, -1)`` reshape (by SVD) and the
effective weight's ``std * sqrt(fan_in)``: 1 for LeCun's initialisation, the scale that
Lin et al. show SN keeps its layers at (and that exact SN undercuts).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-layer effective spectral norms of the standard CNN D under each method",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", default="none,sn,ssn,bsn,bssn,sn_exact,eqlr,wn")
    p.add_argument("--resolution", type=int, default=32, help="image size (multiple of 8)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from normlab.experiments.layer_scales import layer_scale_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = layer_scale_table(
        methods,
        resolution=args.resolution,
        channels=args.channels,
        width=args.width,
        seed=args.seed,
    )
    print(table)
    return 0
