"""FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): Yogi (Zaheer
et al. 2018) on the server, fed with the round's pseudo-gradient Delta_t = avg(x_i) - x_t.

Yogi moves v towards Delta^2 by an additive, sign-controlled amount instead of Adam's
multiplicative decay, so the effective step size cannot grow abruptly when updates shrink.
No bias correction, as in Algorithm 2.
"""

from __future__ import annotations

import torch

from ..registry import register_strategy
from .fedadam import FedAdam


@register_strategy("fedyogi")
class FedYogi(FedAdam):
    """m = b1 m + (1 - b1) Delta; v = v - (1 - b2) Delta^2 sign(v - Delta^2);
    x += eta m / (sqrt(v) + tau), with m_{-1} = 0, v_{-1} = tau^2.

    Arguments and defaults as for :class:`FedAdam`, whose subclass it is: only the v update
    differs (beta1 0.9, beta2 0.99 as fixed in the paper; tau 1e-3 from its grid; server_lr
    1e-2 only a starting point, tuned per task in the paper).

    Args:
        server_lr: eta (> 0). beta1, beta2: decays in [0, 1). tau: adaptivity (> 0).
        clients_per_round / fraction / weighted / aggregator: as for :class:`FedAvg`.
    """

    def _update_v(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        sq = torch.mul(delta, delta, out=self._buffer("direction"))  # free until v is done
        change = torch.sub(v, sq, out=self._buffer("yogi")).sign_().mul_(sq)
        v.sub_(change, alpha=1 - self.beta2)
