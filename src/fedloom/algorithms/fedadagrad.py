"""FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): Adagrad on
the server, fed with the round's pseudo-gradient Delta_t = avg(x_i) - x_t.

Summing squared pseudo-gradients gives rarely-updated coordinates larger steps, the kind of
adaptivity the paper finds most useful on sparse tasks (Stack Overflow). v only grows, so
steps only shrink and a larger server_lr than FedAdam's is the usual start.
"""

from __future__ import annotations

import torch

from ..aggregation import Aggregator
from ..registry import register_strategy
from .fedopt import AdaptiveFedOpt


@register_strategy("fedadagrad")
class FedAdagrad(AdaptiveFedOpt):
    """m = b1 m + (1 - b1) Delta; v = v + Delta^2; x += eta m / (sqrt(v) + tau), with
    m_{-1} = 0 and v_{-1} = tau^2 (Algorithm 2 asks v_{-1} >= tau^2; we take the bound).

    Algorithm 2 keeps the momentum m for all three methods; the default ``beta1=0`` is plain
    Adagrad (m = Delta), the form the paper's analysis takes. tau 1e-3 is from the paper's
    grid; server_lr 1e-1 only a starting point (the paper tunes eta per task).

    Args:
        server_lr: eta (> 0). tau: adaptivity (> 0). beta1: momentum decay in [0, 1).
        clients_per_round / fraction / weighted / aggregator: as for :class:`FedAvg`.
    """

    def __init__(
        self,
        server_lr: float = 1e-1,
        tau: float = 1e-3,
        beta1: float = 0.0,
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

    def _update_v(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        v.addcmul_(delta, delta)
