"""The grid of a comparison: methods x seeds (x swept scales), one ``TrainConfig`` per run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from normlab.data.stacked import STACKED_SPEC
from normlab.gan.config import TrainConfig
from normlab.reparam import METHODS, SCALED_METHODS

#: The stacked-digits classifier file every run of a study shares (in the study folder).
STACKED_CLASSIFIER_FILE = "digit_classifier.pt"


@dataclass(frozen=True)
class RunSpec:
    """One run of the study: its group label, seed, config and folder."""

    group: str
    method: str
    scale: float | None
    seed: int
    config: TrainConfig
    run_dir: Path


def group_label(method: str, scale: float | None) -> str:
    """``"bssn"`` or ``"bssn@1.6"`` when a scale sweep gives the method several groups."""
    return method if scale is None else f"{method}@{scale:g}"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("@", "_c"))


def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, checked against ``normlab.METHODS``."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty; give a comma-separated list, e.g. none,sn,bssn")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}; choose from: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods lists a method twice: {text!r}")
    return methods


def parse_scales(text: str | None) -> list[float] | None:
    """Comma-separated positive scales, or None."""
    if text is None or not text.strip():
        return None
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--scale must be comma-separated numbers, got {text!r}") from None
    if any(not s > 0 for s in scales):
        raise ValueError(f"--scale values must be positive, got {text!r}")
    return scales


def build_grid(
    base: TrainConfig,
    methods: list[str],
    seeds: list[int],
    scales: list[float] | None,
    out_dir: Path,
) -> list[RunSpec]:
    """Every run of the study, in a fixed order (group, then seed).

    A scale sweep applies to the scaled methods (``ssn``, ``bssn``) only; the base
    config's own ``scale`` is used when no sweep is given.
    """
    runs = []
    if base.data == STACKED_SPEC and base.feature_cache is None and not base.inception_weights:
        # The digit classifier does not depend on the runs: one file serves the whole study.
        base = base.replace(feature_cache=str(out_dir / STACKED_CLASSIFIER_FILE))
    for method in methods:
        method_scales: list[float | None]
        if method in SCALED_METHODS:
            method_scales = list(scales) if scales else [base.scale]
        else:
            method_scales = [None]
        for scale in method_scales:
            label = group_label(method, scale if scales and method in SCALED_METHODS else None)
            for seed in seeds:
                # One torch thread per run: parallel runs then share the cores cleanly.
                cfg = base.replace(method=method, seed=seed, scale=scale, threads=1)
                run_dir = out_dir / "runs" / _slug(label) / f"seed{seed}"
                runs.append(RunSpec(label, method, scale, seed, cfg, run_dir))
    return runs
