"""The aggregator protocol: combine client parameter buffers into one, streaming."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Aggregator(ABC):
    """Streams weighted flat buffers in and gives their combination out.

    ``reset`` once per round, ``add`` per accepted client (the buffer may be reused by the
    caller right after ``add`` returns), ``result`` at the end. Aggregators that need every
    update at once (median, Krum) keep their own copies; the weighted mean needs none.
    """

    @abstractmethod
    def reset(self, like: torch.Tensor) -> None:
        """Start a new aggregation of buffers shaped like ``like``."""

    @abstractmethod
    def add(self, params: torch.Tensor, weight: float) -> None:
        """Fold in one client's buffer with a non-negative weight."""

    @abstractmethod
    def result(self) -> torch.Tensor:
        """The aggregate; valid until the next ``reset``."""

    @property
    @abstractmethod
    def count(self) -> int:
        """Buffers added since the last ``reset``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
