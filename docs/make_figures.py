"""Regenerate every figure of the guide (``docs/figures/*.png``): ``make docs-figures``.

Each figure comes from the normlab command its page names, run here at the size the page states,
one after another on the CPU (the commands use one thread each). The PNGs are copied into
``docs/figures/`` under the names the pages use; a figure over ``--max-kb`` is re-saved with fewer
colours so the repository stays small.

Usage::

    python docs/make_figures.py                    # all figures (~9 min of CPU, one thread)
    python docs/make_figures.py --only eqlr,wn     # some of them
    python docs/make_figures.py --keep runs/docs   # keep the JSON results there too
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"

#: Job name -> (normlab command line after ``normlab``, {figure in the output: name in docs}).
JOBS: dict[str, tuple[list[str], dict[str, str]]] = {
    "eqlr": (["experiment", "eqlr"], {"eqlr.png": "eqlr.png"}),
    "wn": (["experiment", "wn"], {"wn.png": "wn.png"}),
    "fixup": (["experiment", "fixup", "--quick"], {"fixup.png": "fixup.png"}),
    "cbn": (["experiment", "cbn", "--quick"], {"cbn.png": "cbn.png"}),
    "classnorm": (["experiment", "classnorm", "--quick"], {"classnorm.png": "classnorm.png"}),
    "diagnose": (
        ["diagnose", "--steps", "100", "--quiet"],
        {
            "grad_norms.png": "sn_grad_norms.png",
            "sigma.png": "sn_sigma.png",
            "lipschitz.png": "instruments_lipschitz.png",
            "input_grad.png": "instruments_input_grad.png",
        },
    ),
}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _shrink(path: Path, max_kb: int) -> None:
    """Re-save ``path`` with an adaptive 256-colour palette if it is over ``max_kb``."""
    if path.stat().st_size <= max_kb * 1024:
        return
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(JOBS)}")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    parser.add_argument("--max-kb", type=int, default=200, help="largest PNG size (default 200)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(JOBS)
    bad = [n for n in names if n not in JOBS]
    if bad:
        parser.error(f"unknown figure job(s) {', '.join(bad)}; choose from {', '.join(JOBS)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    work = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="normlab-docs-"))
    total = time.perf_counter()
    try:
        for name in names:
            command, figures = JOBS[name]
            out = work / name
            cmd = [sys.executable, "-m", "normlab", *command, "--out", str(out)]
            print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
            start, cpu0 = time.perf_counter(), _children_cpu()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            for src, dst in figures.items():
                target = FIGURES / dst
                shutil.copyfile(out / src, target)
                _shrink(target, args.max_kb)
                print(
                    f"  {target.relative_to(FIGURES.parent)} ({target.stat().st_size // 1024} KB)"
                )
            wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
            print(f"  {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"all figures in {time.perf_counter() - total:.0f} s wall, {_children_cpu():.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
