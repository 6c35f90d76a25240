"""Shared by the sparsifiers: the fraction a config names and how many coordinates it keeps."""

from __future__ import annotations

import math

from .codec import Sparsifier


def parse_fraction(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {text!r}")
    return value


def kept(fraction: float, n: int) -> int:
    """``round(fraction * n)``, at least one coordinate of a non-empty vector, at most ``n``."""
    return min(n, max(1, round(fraction * n))) if n else 0


class FractionSparsifier(Sparsifier):
    """A sparsifier named ``<name>:<fraction>`` that keeps :func:`kept` coordinates; the
    subclass says which (``select``) and how the receiver learns them (``check``,
    ``indices``)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def spec(self) -> str:
        return f"{self.name}:{self.fraction!r}"

    def count(self, n: int) -> int:
        return kept(self.fraction, n)
