"""The aggregator protocol: combine client parameter buffers into one, streaming."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the algorithms package imports this one: no import cycle at run time
    from ..algorithms.client import ClientAlgorithm


class Aggregator(ABC):
    """Streams weighted flat buffers in and gives their combination out.

    ``reset`` once per round, ``add`` per accepted client (the buffer may be reused by the
    caller right after ``add`` returns), ``result`` at the end. Aggregators that need every
    update at once (median, Krum) keep their own copies; the weighted mean needs none.

    ``add`` also gets the update's ``extras`` (e.g. ``extras["tensors"]``, what a client part
    returned), which most aggregators ignore. An aggregator whose rule needs something computed
    on the clients names that client part in :attr:`client`; strategies without a client part
    of their own (FedAvg, the FedOpt family) then run it.
    """

    #: the client part (:class:`~fedloom.algorithms.client.ClientAlgorithm`) this aggregator
    #: needs on every client, or None
    client: ClientAlgorithm | None = None

    @abstractmethod
    def reset(self, like: torch.Tensor) -> None:
        """Start a new aggregation of buffers shaped like ``like``."""

    @abstractmethod
    def add(
        self, params: torch.Tensor, weight: float, extras: dict[str, Any] | None = None
    ) -> None:
        """Fold in one client's buffer with a non-negative weight; ``extras`` is the update's
        ``extras`` dict (valid, like ``params``, only until ``add`` returns), or None."""

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
