"""``normlab eval RUN``: metrics of a finished or running run, from its newest good checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics of a run", description=run.__doc__)
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run folder")
    p.add_argument(
        "--n", type=int, default=None, help="generated samples (default: the run's eval_samples)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the metrics of a run's generator (its EMA where kept) at its newest good checkpoint."""
    from normlab.gan.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, n=args.n)
    if args.json:
        print(json.dumps(result))
        return 0
    from normlab.gan.evaluate import image_metric_note

    print(f"{args.run_dir} at step {result.pop('step')}:")
    info = result.pop("metric_info", {})
    for k, v in result.items():
        print(f"  {k:<18} {v:.4g}" if isinstance(v, float) else f"  {k:<18} {v}")
    if info:
        print(f"  ({image_metric_note(info)})")
    return 0
