"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates"): per coordinate, drop the ``floor(beta * n)`` largest and
smallest values and average the rest. Up to that many bad clients per side cannot move a
coordinate outside the range of the honest values, and the mean of what remains is less noisy
than the median when most clients are honest.
"""

from __future__ import annotations

import math

import torch

from ..registry import register_aggregator
from .median import StackingAggregator


@register_aggregator("trimmed_mean")
class TrimmedMean(StackingAggregator):
    """Per coordinate, the mean of the values left after trimming ``floor(beta * n)`` per side.

    Args:
        beta: fraction trimmed from each side, in ``[0, 0.5)``; ``0`` is the plain mean. The
            count is rounded down, so a round with fewer than ``1 / beta`` updates trims
            nothing: choose ``beta`` for the smallest round you expect.

    Weights are ignored, as in the paper: they are self-reported sample counts, which a bad
    client could inflate to dominate the surviving values.
    """

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def trimmed(self, n: int) -> int:
        """How many values are dropped from each side of a coordinate with ``n`` updates."""
        return math.floor(self.beta * n)

    def result(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("TrimmedMean.result: no update was added")
        x = self.updates
        n = x.shape[0]
        k = self.trimmed(n)
        if n - 2 * k < 1:  # cannot happen for beta < 0.5; kept for subclasses changing trimmed()
            raise RuntimeError(
                f"TrimmedMean: trimming {k} of {n} updates per side leaves none to average"
            )
        if k == 0:
            return self._shaped(x.mean(dim=0))
        kept = torch.sort(x, dim=0).values[k : n - k]
        return self._shaped(kept.mean(dim=0))
