"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization").

Why: when clients take different numbers of local steps (stragglers, unequal data or epochs),
FedAvg's average weights each client by how far it walked, so it converges to the optimum of
an inconsistent, step-weighted objective. FedNova divides each client's change by the l1 norm
of its aggregation vector ``a_i`` (the coefficients of the gradients that make up the change)
and then takes one step of an effective length ``tau_eff`` (the paper's eq. (7)):

    p_i = n_i / sum_j n_j     d_i = (x - y_i) / ||a_i||_1     tau_eff = sum_i p_i ||a_i||_1
    x <- x - tau_eff * sum_i p_i d_i

``x - y_i`` is the client's own descent (learning rate times gradients), so subtracting moves
``x`` the way the clients moved. With equal steps and plain SGD every ``||a_i||_1 = tau`` and
FedNova is weighted FedAvg. Computed streaming as ``x <- (1 - s) x + s m``, where ``m`` is the
mean of the ``y_i`` weighted by ``n_i / ||a_i||_1`` (one accumulator) and
``s = tau_eff * sum_i p_i / ||a_i||_1 >= 1`` (Cauchy-Schwarz: FedNova steps past ``m``).

``||a_i||_1`` for ``tau`` steps of ``torch.optim.SGD`` from a fresh momentum buffer ``rho``:
gradient ``j`` enters every later buffer, with total coefficient ``(1 - rho^(tau-j+1)) / (1 -
rho)``, so ``||a||_1 = [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho)`` (``tau`` when
``rho = 0``); the official code sums the counter ``c <- rho c + 1``, as :func:`sgd_norm` does.
Beyond the official code (which ignores both), dampening and Nesterov are counted exactly. It
assumes a constant learning rate within the round, a fresh buffer each round (fedloom's
default, ``keep_optimizer_state=False``) and reads the first parameter group; other optimizers
count as plain SGD. The whole federated buffer is normalised alike, BatchNorm statistics too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from ..aggregation import WeightedMean
from ..registry import register_strategy
from ..update import ClientUpdate
from .base import Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm

log = logging.getLogger("fedloom")
NORM = "fednova_norm"  # the metric that carries ||a_i||_1


def sgd_norm(
    steps: int, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False
) -> float:
    """``||a||_1`` of ``steps`` steps of torch's SGD started with an empty momentum buffer."""
    if momentum == 0:
        return float(steps)
    total = buf = 0.0  # buf: the sum of the gradient coefficients in the momentum buffer
    for t in range(steps):
        buf = 1.0 if t == 0 else momentum * buf + (1.0 - dampening)
        total += 1.0 + momentum * buf if nesterov else buf
    return total


@register_client_algorithm
class NormalizedSteps(ClientAlgorithm):
    """Reports ``||a_i||_1`` of the client's optimizer steps as ``metrics["fednova_norm"]``."""

    name = "fednova"

    def end(self, run: LocalRun) -> None:
        g = run.optimizer.param_groups[0]
        rho, damp = float(g.get("momentum", 0.0)), float(g.get("dampening", 0.0))
        run.metrics[NORM] = sgd_norm(run.steps, rho, damp, bool(g.get("nesterov", False)))


@register_strategy("fednova")
class FedNova(Strategy):
    """Normalised averaging; stragglers' partial work is kept (their fewer steps normalised).

    Args:
        clients_per_round / fraction: see :class:`Strategy`. FedNova has no server
            hyper-parameter of its own (the official code's optional server momentum ``gmf``
            is left out); the client's optimizer settings define ``a_i``.

    Updates without a finite, positive ``fednova_norm`` metric (a client without the client
    part, or one that took no step) are skipped with a warning.
    """

    accepts_partial_work = True

    def __init__(self, clients_per_round: int | None = None, fraction: float | None = None):
        super().__init__(clients_per_round, fraction)
        self.client = NormalizedSteps()
        self._mean = WeightedMean()

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        self._mean.reset(global_params)
        ref = n_sum = ratio_sum = inverse_sum = 0.0
        for u in updates:
            a = u.metrics.get(NORM)
            if isinstance(a, bool) or not isinstance(a, int | float) or not 0 < a < math.inf:
                why = f"no valid {NORM} ({a!r})"
                log.warning("round %d: update of client %d skipped: %s", round, u.client_id, why)
                continue
            ref = ref or float(a)  # norms relative to the first: equal ones give exactly 1
            n, r = float(u.num_samples), float(a) / ref
            self._mean.add(u.params, n / r)
            n_sum, ratio_sum, inverse_sum = n_sum + n, ratio_sum + n * r, inverse_sum + n / r
        if self._mean.count == 0:
            log.warning("round %d: no client update was accepted; the model is unchanged", round)
            return global_params
        s = ratio_sum * inverse_sum / (n_sum * n_sum)  # tau_eff * sum_i p_i / ||a_i||_1
        return global_params.mul_(1.0 - s).add_(self._mean.result(), alpha=s)
