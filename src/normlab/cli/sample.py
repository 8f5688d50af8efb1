"""``normlab sample RUN --n 64 --out grid.png``: a picture of a run's samples."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples of a run into a PNG",
        description="Draw samples from a run's generator (newest good checkpoint; EMA where kept): "
        "an image grid, or a scatter over the mixture for 2-D data.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run folder")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from normlab.gan.sample import sample_run

    path = sample_run(args.run_dir, args.n, args.out)
    print(f"wrote {path}")
    return 0
