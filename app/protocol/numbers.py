"""The number checks the protocol's pure rules share: a ValueError naming the argument and what it must be."""

from __future__ import annotations

import math


def positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """`value` as a float when it is finite and > 0 (>= 0 with `allow_zero`)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


def percent(name: str, value: float, *, allow_zero: bool = True) -> float:
    """`value` as a float when it is a percentage: 0 (unless not allowed) .. 100."""
    v = positive(name, value, allow_zero=allow_zero)
    if v > 100:
        raise ValueError(f"{name} must be <= 100, got {value!r}")
    return v
