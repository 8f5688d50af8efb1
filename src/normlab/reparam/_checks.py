"""Argument checks the methods share: clear errors that name the bad value."""

from __future__ import annotations

import math


def check_number(name: str, value: float, where: str, integer: bool = False) -> float:
    """``value`` if it is a positive (integer) number, else a clear error naming it."""
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "a positive integer" if integer else "a positive number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({where})")
    if not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r} ({where})")
    return value
