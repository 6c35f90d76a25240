"""The protocol of asynchronous strategies: updates arrive one by one, on stale models.

An async strategy sees each update with its *staleness* (global version now minus the version
the client trained from) and the model it trained from, and says when enough has arrived to
make a new global version (OpenFed's aggregate triggers: every N updates; the loop adds every
T seconds).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..update import ClientUpdate
from .base import ModelHooks, RunHooks, Stateful


def staleness_weight(staleness: int, kind: str = "polynomial", a: float = 0.5) -> float:
    """s(t - tau) of Xie et al. 2019: constant 1, polynomial (1 + s)^-a, or hinge."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1 + staleness) ** (-a))
    if kind == "hinge":  # 1 up to b=10 versions, then 1 / (a (s - b) + 1)
        return 1.0 if staleness <= 10 else 1.0 / (a * (staleness - 10) + 1)
    raise ValueError(f"staleness kind must be constant, polynomial or hinge, got {kind!r}")


class AsyncStrategy(Stateful, ModelHooks, RunHooks, ABC):
    """Base of asynchronous strategies.

    Args:
        max_staleness: updates staler than this are refused (logged, not aggregated).
    """

    def __init__(self, max_staleness: int = 20):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = max_staleness

    @abstractmethod
    def accept(
        self,
        global_params: torch.Tensor,
        update: ClientUpdate,
        staleness: int,
        base: torch.Tensor,
    ) -> None:
        """Take in one update trained from ``base`` (the global model ``staleness`` versions
        ago). The update's buffer may be reused after this returns."""

    @abstractmethod
    def ready(self) -> bool:
        """True when a new global version should be made (the count trigger)."""

    @abstractmethod
    def pending(self) -> int:
        """Updates taken in since the last new version."""

    @abstractmethod
    def apply(self, global_params: torch.Tensor) -> torch.Tensor:
        """Write the new global version into ``global_params`` (in place) and reset."""

    def cohort_size(self, available: int) -> int:
        return available
