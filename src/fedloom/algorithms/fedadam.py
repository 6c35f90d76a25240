"""FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): Adam on the
server, fed with the round's pseudo-gradient Delta_t = avg(x_i) - x_t.

Per-coordinate step sizes make the server robust to badly scaled or sparse updates, and the
paper finds FedAdam easier to tune than FedAvg. Follows Algorithm 2 exactly: no bias
correction (unlike ``torch.optim.Adam``); v starts at tau^2 and tau bounds the first steps.
"""

from __future__ import annotations

import torch

from ..aggregation import Aggregator
from ..registry import register_strategy
from .fedopt import AdaptiveFedOpt, check_decay


@register_strategy("fedadam")
class FedAdam(AdaptiveFedOpt):
    """m = b1 m + (1 - b1) Delta; v = b2 v + (1 - b2) Delta^2; x += eta m / (sqrt(v) + tau).

    Defaults: beta1 0.9 and beta2 0.99 are the values the paper fixes in its experiments and
    tau 1e-3 is from its tau grid; server_lr 1e-2 is only a starting point (the paper tunes
    eta per task on a log10 grid).

    Args:
        server_lr: eta (> 0). beta1, beta2: decays in [0, 1). tau: adaptivity (> 0).
        clients_per_round / fraction / weighted / aggregator: as for :class:`FedAvg`.
    """

    def __init__(
        self,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        *,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(
            server_lr,
            beta1,
            tau,
            clients_per_round=clients_per_round,
            fraction=fraction,
            weighted=weighted,
            aggregator=aggregator,
        )
        self.beta2 = check_decay("beta2", beta2)

    def _update_v(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        v.mul_(self.beta2).addcmul_(delta, delta, value=1 - self.beta2)
