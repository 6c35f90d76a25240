"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): sample clients, train locally, average weighted by sample count."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from ..aggregation import Aggregator, WeightedMean
from ..registry import register_strategy
from ..update import ClientUpdate
from .base import Strategy

log = logging.getLogger("fedloom")


@register_strategy("fedavg")
class FedAvg(Strategy):
    """w_{t+1} = sum_k n_k w_k / sum_k n_k over the round's accepted clients.

    Args:
        clients_per_round / fraction: see :class:`Strategy` (the paper's C is ``fraction``).
        weighted: weight by sample count (the paper) or uniformly.
        aggregator: how buffers are combined; the weighted mean by default. An aggregator
            that needs a client part (:attr:`Aggregator.client`, e.g. elastic aggregation's
            importance) gets it run on the clients when the strategy has none of its own.
    """

    def __init__(
        self,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(clients_per_round, fraction)
        self.weighted = weighted
        self.aggregator = aggregator or WeightedMean()
        self.client = self.client or self.aggregator.client

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        avg = combine(self.aggregator, global_params, updates, self.weighted)
        if avg is None:
            log.warning("round %d: no client update was accepted; the model is unchanged", round)
            return global_params
        return global_params.copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        return {"aggregator": self.aggregator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.aggregator.load_state_dict(state.get("aggregator", {}))


def combine(
    aggregator: Aggregator, like: torch.Tensor, updates: Iterable[ClientUpdate], weighted: bool
) -> torch.Tensor | None:
    """Stream ``updates`` through ``aggregator`` (weighted by sample count or uniformly); the
    combination, or None when no update came. Shared by FedAvg and the server optimisers."""
    aggregator.reset(like)
    for u in updates:
        aggregator.add(u.params, float(u.num_samples) if weighted else 1.0, u.extras)
    return aggregator.result() if aggregator.count else None
