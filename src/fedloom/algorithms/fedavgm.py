"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification"): FedAvg with heavy-ball momentum on the server.

Under non-identical client data the round averages point in noisy, shifting directions;
accumulating them in a server momentum buffer damps that noise and speeds training, with
no change for clients. Hsu et al. apply v to the model directly (server_lr 1) and tune beta;
``server_lr`` is the usual generalisation (Reddi et al. 2021's FedOpt with SGDM).
"""

from __future__ import annotations

import torch

from ..aggregation import Aggregator
from ..registry import register_strategy
from .fedopt import FedOpt, check_decay


@register_strategy("fedavgm")
class FedAvgM(FedOpt):
    """v = momentum * v + Delta; x += server_lr * v, with Delta = avg(x_i) - x and v_{-1} = 0.

    With ``momentum=0`` and ``server_lr=1`` this is FedAvg, bit for bit.

    Args:
        server_lr: server learning rate (> 0); 1.0 as in Hsu et al.
        momentum: server momentum beta in [0, 1); 0.9, one of Hsu et al.'s best values.
        clients_per_round / fraction / weighted / aggregator: as for :class:`FedAvg`.
    """

    def __init__(
        self,
        server_lr: float = 1.0,
        momentum: float = 0.9,
        *,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(
            server_lr,
            clients_per_round=clients_per_round,
            fraction=fraction,
            weighted=weighted,
            aggregator=aggregator,
        )
        self.momentum = check_decay("momentum", momentum)

    def _initial_state(self) -> dict[str, float]:
        return {"momentum": 0.0}

    def _step(self, delta: torch.Tensor) -> torch.Tensor:
        return self._state["momentum"].mul_(self.momentum).add_(delta)
