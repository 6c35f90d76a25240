"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

Each client minimises ``F_k(w) + mu/2 * ||w - w_t||^2``: its local objective plus a proximal
term that keeps it near the round's global model ``w_t``. The term's gradient,
``mu * (w - w_t)``, is added to the user's gradients just before every optimizer step (the
sign matters: it pulls ``w`` towards ``w_t``; several frameworks have shipped it reversed).
The server averages as FedAvg does, but keeps the partial work of stragglers instead of
dropping it, which is what makes FedProx robust to systems heterogeneity.
"""

from __future__ import annotations

import math

import torch

from ..aggregation import Aggregator
from ..registry import register_strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm
from .fedavg import FedAvg


@register_client_algorithm
class ProximalTerm(ClientAlgorithm):
    """Adds ``mu * (w - w_global)`` to every federated parameter's gradient before a step."""

    name = "fedprox"

    def __init__(self, mu: float):
        if not (isinstance(mu, int | float) and math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
        self.mu = float(mu)

    def begin(self, run: LocalRun) -> None:
        if self.mu == 0:
            return
        mu, by_param = self.mu, dict(zip(map(id, run.params), run.global_params))

        def proximal(grads: list[torch.Tensor], params: list[torch.Tensor]) -> None:
            anchors = [by_param[id(p)] for p in params]
            torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)

        run.correct_gradients(proximal)


@register_strategy("fedprox")
class FedProx(FedAvg):
    """FedAvg aggregation with a proximal term on the clients and partial work kept.

    Args:
        mu: weight of the proximal term (the asmallbit config's ``lambda``). The paper tunes
            it from {0.001, 0.01, 0.1, 1}; 0.01 is a common default. ``mu = 0`` is FedAvg
            that keeps stragglers' partial work.
        clients_per_round / fraction / weighted / aggregator: as :class:`FedAvg`.
    """

    accepts_partial_work = True

    def __init__(
        self,
        mu: float = 0.01,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(clients_per_round, fraction, weighted, aggregator)
        self.client = ProximalTerm(mu)
        self.mu = self.client.mu
