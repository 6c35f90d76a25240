"""Weighted mean, accumulated in place in one reused buffer."""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_aggregator
from .base import Aggregator


@register_aggregator("mean")
class WeightedMean(Aggregator):
    """sum_i w_i x_i / sum_i w_i, one ``add_`` per client into a buffer kept across rounds.

    The sum is accumulated in float64 when ``precise`` is set (exact-ish for many clients);
    by default in the parameters' dtype, which is what the plain loop would do.
    """

    def __init__(self, precise: bool = False):
        self.precise = precise
        self._acc: torch.Tensor | None = None
        self._total = 0.0
        self._count = 0

    def reset(self, like: torch.Tensor) -> None:
        dtype = torch.float64 if self.precise else like.dtype
        if self._acc is None or self._acc.shape != like.shape or self._acc.device != like.device:
            self._acc = torch.zeros(like.shape, dtype=dtype, device=like.device)
        else:
            self._acc.zero_()
        self._total = 0.0
        self._count = 0

    def add(
        self, params: torch.Tensor, weight: float, extras: dict[str, Any] | None = None
    ) -> None:
        del extras  # not used
        if self._acc is None:
            raise RuntimeError("WeightedMean.add called before reset")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self._acc.add_(params, alpha=weight)
        self._total += weight
        self._count += 1

    def result(self) -> torch.Tensor:
        if self._acc is None or self._count == 0 or self._total <= 0:
            raise RuntimeError("WeightedMean.result: no update with positive weight was added")
        return self._acc.div_(self._total)

    @property
    def count(self) -> int:
        return self._count
