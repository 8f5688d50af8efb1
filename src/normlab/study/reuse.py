"""Whether a study may reuse what its run folders already hold.

A run folder (one ``config.yaml``) is reused only for the run it was made for. Its stored
config is compared with the one asked for (both resolved, derived values filled in):

* keys that change neither what is trained nor how it is evaluated (``IGNORED_KEYS``:
  logging, checkpoint and sample intervals, device, threads, compile) may differ;
* more ``steps`` than the run holds continues the run from its newest checkpoint;
* any other difference (a learning rate, a width, fewer steps than already trained, other
  evaluation settings) is a conflict: ``check_reuse`` raises ``ConfigMismatch`` naming
  each such run and its differing keys, before anything trains. ``rerun_changed=True``
  deletes those run folders instead, so the runs train again from scratch.

Example::

    >>> check_reuse(build_grid(cfg, ["sn"], [0, 1], None, out))   # doctest: +SKIP
    ConfigMismatch: runs/s holds 2 runs made with other settings than asked: ...
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normlab.gan.checkpoint import list_checkpoints
from normlab.gan.config import TrainConfig
from normlab.gan.run import CONFIG_FILE
from normlab.study.grid import RunSpec

#: Config keys that may differ between a run folder and the study asking for it.
IGNORED_KEYS = (
    "log_every",
    "eval_every",
    "ckpt_every",
    "sample_every",
    "keep_checkpoints",
    "device",
    "threads",
    "compile",
)


class ConfigMismatch(ValueError):
    """Run folders hold runs of other settings than the study asks for (``conflicts``)."""

    def __init__(self, conflicts: list[Conflict], out_dir: Path | None = None) -> None:
        self.conflicts = conflicts
        where = str(out_dir) if out_dir is not None else "the study folder"
        lines = [
            f"{where} holds {len(conflicts)} run(s) made with other settings than asked "
            "(nothing was trained):"
        ]
        for c in conflicts:
            lines.append(f"  {c.spec.group} seed {c.spec.seed} ({c.spec.run_dir}): {c.describe()}")
        lines.append(
            "Either give a new --out folder, or add --rerun-changed to delete these runs and "
            "train them again with the settings asked."
        )
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Conflict:
    """One run folder that cannot serve the run asked for, and why."""

    spec: RunSpec
    differences: tuple[tuple[str, Any, Any], ...]  # (key, stored, asked)

    def describe(self) -> str:
        return "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, old, new in self.differences)


def stored_config(run_dir: Path) -> TrainConfig | None:
    """The resolved config a run folder was made with (None: no ``config.yaml``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return TrainConfig.from_file(path).resolved()


def trained_steps(run_dir: Path) -> int:
    """The step of the run's newest checkpoint file (0 when it has none)."""
    names = [p.stem for p in list_checkpoints(run_dir)]
    return max((int(n.split("_")[1]) for n in names), default=0)


def differences(stored: TrainConfig, asked: TrainConfig, progress: int) -> list[tuple]:
    """``(key, stored, asked)`` for every conflicting key (see the module doc).

    ``progress`` is the step the run folder has reached: asking for fewer steps than that
    is a conflict, asking for more is not (the run continues).
    """
    asked = asked.resolved()
    out = []
    for key in TrainConfig.field_names():
        old, new = getattr(stored, key), getattr(asked, key)
        if old == new or key in IGNORED_KEYS:
            continue
        if key == "steps" and new >= progress:
            continue
        out.append((key, old, new))
    return out


def find_conflicts(runs: list[RunSpec]) -> list[Conflict]:
    """The runs whose folders hold a run of other settings."""
    conflicts = []
    for spec in runs:
        stored = stored_config(spec.run_dir)
        if stored is None:
            continue
        progress = max(trained_steps(spec.run_dir), 0)
        diffs = differences(stored, spec.config, progress)
        if diffs:
            conflicts.append(Conflict(spec, tuple(diffs)))
    return conflicts


def check_reuse(
    runs: list[RunSpec], *, rerun_changed: bool = False, out_dir: Path | None = None
) -> list[Conflict]:
    """Raise ``ConfigMismatch`` for conflicting run folders, or with ``rerun_changed`` delete
    them (they train again); returns the conflicts found."""
    conflicts = find_conflicts(runs)
    if conflicts and not rerun_changed:
        raise ConfigMismatch(conflicts, out_dir)
    for c in conflicts:
        shutil.rmtree(c.spec.run_dir)
    return conflicts
