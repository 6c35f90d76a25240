"""FedAsync (Xie, Koyejo & Gupta 2019, "Asynchronous Federated Optimization"): every update
makes a new version, w <- (1 - a_t) w + a_t w_k with a_t = alpha * s(staleness)."""

from __future__ import annotations

import torch

from ..registry import register_strategy
from ..update import ClientUpdate
from .asynchronous import AsyncStrategy, staleness_weight


@register_strategy("fedasync")
class FedAsync(AsyncStrategy):
    """Args: alpha (mixing weight, the paper's 0.6), staleness ("constant", "polynomial",
    "hinge") and a (the polynomial's exponent, 0.5), max_staleness."""

    def __init__(
        self,
        alpha: float = 0.6,
        staleness: str = "polynomial",
        a: float = 0.5,
        max_staleness: int = 20,
    ):
        super().__init__(max_staleness)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        staleness_weight(0, staleness, a)  # validates the kind
        self.alpha, self.staleness, self.a = alpha, staleness, a
        self._mix: float | None = None
        self._params: torch.Tensor | None = None

    def accept(
        self,
        global_params: torch.Tensor,
        update: ClientUpdate,
        staleness: int,
        base: torch.Tensor,
    ) -> None:
        self._mix = self.alpha * staleness_weight(staleness, self.staleness, self.a)
        if self._params is None or self._params.shape != update.params.shape:
            self._params = torch.empty_like(update.params)
        self._params.copy_(update.params)

    def ready(self) -> bool:
        return self._mix is not None

    def pending(self) -> int:
        return int(self._mix is not None)

    def apply(self, global_params: torch.Tensor) -> torch.Tensor:
        if self._mix is not None and self._params is not None:
            global_params.lerp_(self._params, self._mix)  # (1 - a) w + a w_k
        self._mix = None
        return global_params
