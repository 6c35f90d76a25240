"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization").

Why: with heterogeneous clients the minimisers of the local objectives are not the global
one, so FedAvg's fixed points are biased. FedDyn changes each client's objective every round
so that, at a fixed point, the clients' stationary points agree with the global one.

Client ``k`` minimises ``L_k(theta) - <grad_prev_k, theta> + alpha/2 ||theta - theta_t||^2``
(Algorithm 1), so before every optimizer step ``alpha (theta - theta_t) - grad_prev_k`` is
added to the user's gradients: the quadratic term pulls towards the round's model ``theta_t``,
the linear term subtracts the client's accumulated gradient. Afterwards
``grad_prev_k <- grad_prev_k - alpha (theta_k - theta_t)``. The server keeps ``h`` (zero at the
start): ``h <- h - alpha (1/m) sum_{k in P} (theta_k - theta_t)``, ``m`` being *all* clients,
and ``theta_{t+1} = (1/|P|) sum_{k in P} theta_k - h / alpha`` (uniform average, as the paper).

Conventions: the client terms touch trainable federated parameters only; the server update
runs over the whole flat buffer, so float buffers (BatchNorm statistics) get the same ``h``
correction as parameters, which decays to zero once the clients' statistics agree. Memory:
each client that has trained keeps one model-sized ``grad_prev_k`` in its backend state
(``ctx.state["feddyn_grad"]``, checkpointed). No tensor travels with the plan, so FedDyn
runs on every backend, process pools and network clients included.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..aggregation import WeightedMean
from ..registry import register_strategy
from ..update import ClientUpdate
from .base import RoundPlan, Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm
from .fedavg import combine

log = logging.getLogger("fedloom")


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _previous_gradient(run: LocalRun) -> list[torch.Tensor]:
    """Views of this client's ``grad_prev`` (created as zeros) shaped like ``run.params``."""
    prev = run.ctx.state.get("feddyn_grad")
    if prev is None:
        prev = run.ctx.state["feddyn_grad"] = torch.zeros_like(run.flat)
    names = set(run.spec.names)
    slices = [
        run.spec.slice(n) for n, p in run.model.named_parameters() if n in names and p.requires_grad
    ]
    return [prev[s].view_as(p) for s, p in zip(slices, run.params)]


@register_client_algorithm
class DynamicRegularizer(ClientAlgorithm):
    """Adds ``alpha (theta - theta_t) - grad_prev_k`` to the gradients before every step."""

    name = "feddyn"

    def __init__(self, alpha: float):
        self.alpha = _check_alpha(alpha)

    def begin(self, run: LocalRun) -> None:
        alpha = self.alpha
        by_param = {
            id(p): (g, v) for p, g, v in zip(run.params, run.global_params, _previous_gradient(run))
        }

        def dynamic(grads: list[torch.Tensor], params: list[torch.Tensor]) -> None:
            anchors, prevs = zip(*(by_param[id(p)] for p in params))
            torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=alpha)
            torch._foreach_sub_(grads, prevs)

        run.correct_gradients(dynamic)

    def end(self, run: LocalRun) -> None:
        with torch.no_grad():
            diffs = torch._foreach_sub(run.params, run.global_params)
            torch._foreach_add_(_previous_gradient(run), diffs, alpha=-self.alpha)


@register_strategy("feddyn")
class FedDyn(Strategy):
    """FedDyn's server: the average of the round's models corrected by ``-h / alpha``.

    Args:
        alpha: weight of the dynamic regulariser; the paper tries {0.1, 0.01, 0.001}.
        clients_per_round / fraction: see :class:`Strategy` (``m`` is all available clients).
    """

    def __init__(
        self,
        alpha: float = 0.01,
        clients_per_round: int | None = None,
        fraction: float | None = None,
    ):
        super().__init__(clients_per_round, fraction)
        self.client = DynamicRegularizer(alpha)
        self.alpha = self.client.alpha
        self.h: torch.Tensor | None = None  # None: all zeros
        self.num_clients: int | None = None  # m, from the last configure
        self._mean = WeightedMean()

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        self.num_clients = len(available)
        return super().configure(round, available, rng)

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        if not self.num_clients:
            raise RuntimeError("FedDyn.aggregate needs configure first (for m, the clients)")
        avg = combine(self._mean, global_params, updates, weighted=False)  # the paper's mean
        if avg is None:
            log.warning("round %d: no client update was accepted; the model is unchanged", round)
            return global_params
        if self.h is None:
            self.h = torch.zeros_like(global_params)
        share = self._mean.count / self.num_clients
        x = global_params.sub_(avg)  # theta_t - avg = -(1/|P|) sum (theta_k - theta_t)
        self.h.add_(x, alpha=self.alpha * share)
        return x.copy_(avg).sub_(self.h, alpha=1.0 / self.alpha)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.num_clients is not None:
            state["num_clients"] = self.num_clients
        if self.h is not None:
            state["h"] = self.h.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_clients = state.get("num_clients")
        self.h = state["h"].clone() if "h" in state else None
