"""FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
clients send deltas from the model they trained; every K deltas (staleness-weighted,
1/sqrt(1 + s)) are averaged and applied with a server learning rate."""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_strategy
from ..update import ClientUpdate
from .asynchronous import AsyncStrategy, staleness_weight


@register_strategy("fedbuff")
class FedBuff(AsyncStrategy):
    """Args: buffer_size (K, the paper's 10; the "every N updates" trigger), server_lr
    (eta_g, 1.0), weighted_staleness (scale each delta by 1/sqrt(1 + s)), max_staleness."""

    def __init__(
        self,
        buffer_size: int = 10,
        server_lr: float = 1.0,
        weighted_staleness: bool = True,
        max_staleness: int = 20,
    ):
        super().__init__(max_staleness)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.buffer_size, self.server_lr = buffer_size, server_lr
        self.weighted_staleness = weighted_staleness
        self._sum: torch.Tensor | None = None
        self._count = 0

    def accept(
        self,
        global_params: torch.Tensor,
        update: ClientUpdate,
        staleness: int,
        base: torch.Tensor,
    ) -> None:
        if self._sum is None or self._sum.shape != update.params.shape:
            self._sum = torch.zeros_like(update.params)
        w = staleness_weight(staleness, "polynomial", 0.5) if self.weighted_staleness else 1.0
        self._sum.add_(update.params, alpha=w).sub_(base, alpha=w)  # += w (w_k - w_base)
        self._count += 1

    def ready(self) -> bool:
        return self._count >= self.buffer_size

    def pending(self) -> int:
        return self._count

    def apply(self, global_params: torch.Tensor) -> torch.Tensor:
        if self._count and self._sum is not None:
            global_params.add_(self._sum, alpha=self.server_lr / self._count)
            self._sum.zero_()
        self._count = 0
        return global_params

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self._sum, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sum, self._count = state.get("sum"), int(state.get("count", 0))
