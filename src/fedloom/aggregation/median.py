"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates"): each coordinate of the aggregate is the median of that coordinate
over the round's updates, so a minority of arbitrarily bad clients cannot drag it far.

Also home of :class:`StackingAggregator`, the shared base of the robust aggregators, which need
every update at once and so copy each one into a 2-D stack kept across rounds.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_aggregator
from .base import Aggregator


class StackingAggregator(Aggregator):
    """Copies each added buffer into row ``count`` of one ``(capacity, numel)`` tensor.

    The stack is allocated on the first ``reset``, doubled when a round outgrows it and reused
    by later rounds (reallocated only when the shape, dtype or device changes), so a steady
    federation allocates nothing per round. Subclasses read :attr:`updates` and :attr:`weights`.
    """

    def __init__(self) -> None:
        self._stack: torch.Tensor | None = None
        self._shape: torch.Size | None = None
        self._weights: list[float] = []

    def reset(self, like: torch.Tensor) -> None:
        s = self._stack
        numel = like.numel()
        if s is None or s.shape[1] != numel or s.dtype != like.dtype or s.device != like.device:
            self._stack = torch.empty((4, numel), dtype=like.dtype, device=like.device)
        self._shape = like.shape
        self._weights = []

    def add(
        self, params: torch.Tensor, weight: float, extras: dict[str, Any] | None = None
    ) -> None:
        del extras  # not used
        if self._stack is None:
            raise RuntimeError(f"{type(self).__name__}.add called before reset")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if params.numel() != self._stack.shape[1]:
            raise ValueError(f"update has {params.numel()} values, expected {self._stack.shape[1]}")
        n = len(self._weights)
        if n == self._stack.shape[0]:
            grown = self._stack.new_empty((2 * n, self._stack.shape[1]))
            grown[:n].copy_(self._stack)
            self._stack = grown
        self._stack[n].copy_(params.reshape(-1))  # a copy: the caller may reuse ``params``
        self._weights.append(float(weight))

    @property
    def count(self) -> int:
        return len(self._weights)

    @property
    def updates(self) -> torch.Tensor:
        """The ``(count, numel)`` view of this round's updates."""
        if self._stack is None or not self._weights:
            raise RuntimeError(f"{type(self).__name__}.result: no update was added")
        return self._stack[: len(self._weights)]

    @property
    def weights(self) -> list[float]:
        return self._weights

    def _shaped(self, flat: torch.Tensor) -> torch.Tensor:
        assert self._shape is not None
        return flat.reshape(self._shape)


@register_aggregator("median")
class CoordinateMedian(StackingAggregator):
    """Per coordinate, the median of the round's updates.

    With an even count the median is the mean of the two middle values (not the lower one
    that ``torch.median`` returns), so two updates give their plain average.

    Weights are ignored, as in the paper: they are self-reported sample counts, and a
    weighted median would let one client claiming a huge count decide every coordinate.
    """

    def result(self) -> torch.Tensor:
        x = self.updates
        n = x.shape[0]
        if n % 2:  # torch.median is exact for an odd count
            return self._shaped(torch.median(x, dim=0).values)
        # the n/2 + 1 smallest, ascending: the last two rows are the two middle values
        low = torch.topk(x, n // 2 + 1, dim=0, largest=False, sorted=True).values
        return self._shaped(low[-2].mul_(0.5).add_(low[-1], alpha=0.5))
