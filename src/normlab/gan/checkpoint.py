"""Crash-safe checkpoints of a run: written atomically, verified, loaded without executing code.

A checkpoint is one ``torch.save`` file ``checkpoints/step_00001000.pt`` holding only
tensors and plain values: G, D (their power vectors are buffers), the optimizers, the EMA
of G, the RNG states (torch, numpy, python, and the run's own generators), the data
position, the step and the metric history. It is written to a temporary file, fsync-ed,
then renamed into place (the folder fsync-ed too), so a crash leaves either the old or
the new file, never half of one. A ``.sha256`` file beside it (written the same way,
after it) lets a later load detect a file damaged afterwards.

Loading uses ``torch.load(weights_only=True)`` only: a file carrying any other pickled
object (code) is refused with ``CheckpointError``. ``latest_checkpoint`` walks back from
the newest file to the newest *good* one, saying why it skipped the others.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

#: Written into every checkpoint; a file without it is not a normlab run checkpoint.
CHECKPOINT_FORMAT = "normlab-run-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, unsafe, or from another kind of run."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write ``payload`` as the checkpoint of ``step``; keep the newest ``keep`` checkpoints."""
    import io

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "step": int(step), **payload}, buf)
    data = buf.getvalue()
    path = checkpoint_path(run_dir, step)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink(missing_ok=True)  # a stale checksum must never sit beside a new file
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first (leftover temporary files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def clean_temporary(run_dir: str | Path) -> None:
    """Delete temporary files a killed writer left behind."""
    folder = checkpoint_dir(run_dir)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of checkpoint ``path``, verified; ``CheckpointError`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8").split()[:1]
        if expected and hashlib.sha256(data).hexdigest() != expected[0]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is damaged: its contents do not match the checksum "
                f"written with it ({len(data)} bytes; truncated or overwritten after saving)"
            )
    import io

    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "weights_only" in msg.lower() or "unsupported global" in msg.lower():
            raise CheckpointError(
                f"refusing to load checkpoint {str(path)!r}: it holds pickled objects other than "
                f"tensors and plain values, which could run code when loaded (normlab's own "
                f"checkpoints never do). Only load such a file with torch.load(weights_only=False) "
                f"if you trust its source. Detail: {msg.splitlines()[0]}"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged ({msg.splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged or truncated ({len(data)} bytes; {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a normlab run checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return payload


def latest_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest good checkpoint ``(path, payload, skipped)``, or None if the run has none.

    ``skipped`` holds one message per newer file that could not be used. Raises
    ``CheckpointError`` if files exist but none is usable.
    """
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, map_location), skipped
        except CheckpointError as err:
            skipped.append(str(err))
        except FileNotFoundError:  # pruned by a running trainer since the listing
            continue
    if skipped:
        raise CheckpointError("no usable checkpoint in the run: " + " | ".join(skipped))
    return None


# -- RNG states as tensors and plain values (loadable with weights_only=True) -----------------
def rng_state() -> dict[str, Any]:
    """The global torch, numpy and python RNG states."""
    import random

    import numpy as np

    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global generator itself
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
