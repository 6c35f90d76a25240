"""Shared by the sparsifiers: how many coordinates a fraction keeps."""

from __future__ import annotations

import math


def parse_fraction(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {text!r}")
    return value


def kept(fraction: float, n: int) -> int:
    """``round(fraction * n)``, at least one coordinate of a non-empty vector, at most ``n``."""
    return min(n, max(1, round(fraction * n))) if n else 0
