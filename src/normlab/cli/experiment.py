"""``normlab experiment fixup|cbn|classnorm|eqlr|wn --out DIR``: the papers' small experiments."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

#: Experiment name -> module of ``normlab.experiments``.
EXPERIMENTS = {
    "fixup": "fixup",
    "cbn": "cbn",
    "classnorm": "classnorm",
    "eqlr": "eqlr",
    "wn": "wn",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="run a method's small experiment (Fixup, CBN, Class Normalization, equalized lr, WN)",
        description=run.__doc__,
    )
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and PNG files")
    p.add_argument("--quick", action="store_true", help="the reduced size the tests use")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one experiment on the CPU, write NAME.json and NAME.png into --out, print the claims."""
    module = importlib.import_module(f"normlab.experiments.{EXPERIMENTS[args.name]}")
    result = module.run(args.out, quick=args.quick, seed=args.seed)
    print(f"{args.name}: results in {args.out / (args.name + '.json')}")
    summary = result.get("summary")
    if summary is None:  # fixup: one run per variant
        summary = {
            k: {"final_test_acc": r["final_test_acc"], "diverged": r["diverged"]}
            for k, r in result["runs"].items()
        }
    print(json.dumps({"summary": _compact(summary), "claims": result["claims"]}, indent=2))
    return 0


def _compact(summary: dict) -> dict:
    return {
        k: {
            kk: round(vv, 4) if isinstance(vv, float) else vv
            for kk, vv in v.items()
            if not isinstance(vv, list)
        }
        for k, v in summary.items()
    }
