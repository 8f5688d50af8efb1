"""The ``normlab`` command line: parses arguments, then calls the library.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers its parser and sets ``func`` to the
function that runs it. Only this package prints to the terminal for the user
(progress bars aside).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

# Sub-command modules, in the order ``normlab --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "compare",
    "inspect",
    "train",
    "eval",
    "sample",
    "experiment",
    "diagnose",
)


#: Exit codes of a command stopped by SIGINT / SIGTERM (128 + the signal's number).
INTERRUPTED_CODES = (130, 143)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with one sub-parser per command."""
    from normlab import __version__

    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Weight normalization for stable GANs: methods, instruments and a lab.",
    )
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"normlab.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``normlab`` and ``python -m normlab``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"normlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    if argv is None and code in INTERRUPTED_CODES:
        # The process ends now: spare the user the interpreter's final garbage collection
        # of torch's objects (seconds; 7 s on a loaded 2-core machine), everything is written.
        gc.freeze()
    return code
