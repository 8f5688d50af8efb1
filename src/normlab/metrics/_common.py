"""What the feature-space metrics share: input checks, and the cache files of their networks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def as_features(x: Tensor | np.ndarray, name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """``x`` as a finite ``(N, d)`` tensor of ``dtype`` (on its own device), or a clear error."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name}: expected a Tensor or numpy array of features, got {type(x).__name__}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, d), got {tuple(x.shape)}")
    x = x.detach().to(dtype)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name}: {bad} of {x.shape[0]} feature rows hold NaN or inf")
    return x


def check_pair(real: Tensor, fake: Tensor, min_samples: int) -> None:
    """Same feature dimension and enough samples on both sides."""
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}"
        )
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] < min_samples:
            raise ValueError(f"{name}: need at least {min_samples} samples, got {x.shape[0]}")


def save_net_cache(
    net: nn.Module, path: str | Path, fmt: str, config: dict, accuracy: float, fingerprint: str
) -> None:
    """Write a trained network to ``path`` atomically, as a dict of plain values and tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": fmt,
        "config": config,
        "heldout_accuracy": float(accuracy),
        "fingerprint": fingerprint,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_net_cache(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The payload ``save_net_cache`` wrote at ``path``, or a clear error naming ``what``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable {what} cache ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path}: not a {what} cache (expected format {fmt!r})")
    return payload


def restored(net: nn.Module, payload: dict[str, Any]) -> tuple[nn.Module, str]:
    """``net`` with the payload's weights and accuracy, frozen in eval mode; and its fingerprint."""
    net.load_state_dict(payload["state_dict"])
    net.heldout_accuracy = float(payload["heldout_accuracy"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, str(payload.get("fingerprint", ""))
