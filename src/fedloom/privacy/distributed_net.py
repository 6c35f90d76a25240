"""Distributed DP in a deployment: the aggregator's stage accounts the noisy sums it unmasks.

Over the network the noise is not the aggregator's to add: each client clips its delta,
quantises it, adds its Skellam share (:class:`~.ddp_noise.SkellamShares`, drawn from the
client's own secret randomness) and masks it; the secure round
(:mod:`fedloom.runtime.secagg_round`, which sends the clients the calibration) unmasks only
the noisy sum and hands the strategy one update, the global model plus the survivors' mean.
This stage sees that one update, charges the round to the accountant as the simulation's
:class:`~.distributed.DistributedDP` does (:class:`~.ddp_account.DDPAccount`, so the same
config records the same epsilon), records it, and stops the run on ``target_epsilon``.

It refuses any update that did not come out of secure aggregation (no ``secagg_survivors``
count): such an update would carry no noise.
"""

from __future__ import annotations

from typing import Any

import torch

from ..algorithms.base import RoundPlan, Strategy
from ..stages import Stage
from ..update import ClientUpdate
from .accountant import Method
from .ddp_account import DDPAccount
from .ddp_noise import Levels, SkellamShares
from .secagg.compat import check_secagg


class DeployedDistributedDP(Stage):
    """The accounting of distributed DP on a network aggregator.

    Args:
        shares: the noise calibration the aggregator also sends its clients.
        step: the width of one quantisation level, ``2 * clipping_range / (L - 1)``.
        delta, target_epsilon, sampling_rate, accountant: as :class:`~.DistributedDP`'s.
    """

    key = "privacy"

    def __init__(
        self,
        shares: SkellamShares,
        step: float,
        delta: float = 1e-5,
        *,
        target_epsilon: float | None = None,
        sampling_rate: float | None = None,
        accountant: Method = "rdp",
    ):
        if not step > 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        self.shares, self.step = shares, float(step)
        self._account = DDPAccount(shares, delta, target_epsilon, sampling_rate, accountant)
        self._record: dict[str, Any] = {}

    def check(self, strategy: Strategy) -> None:
        check_secagg(strategy, "privacy.mode = 'distributed'")

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        self._account.configure(len(plan.clients), available)
        self._record = {}

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        """Account the round's one securely aggregated update; hand it on unchanged."""
        survivors = update.metrics.get("secagg_survivors")
        if survivors is None:
            raise RuntimeError(
                f"round {round}: privacy.mode = 'distributed' got an update of client "
                f"{update.client_id} that did not come out of secure aggregation"
            )
        grid = Levels(self.step, global_params.numel())
        self._record = self._account.released(round, grid, int(survivors))
        return update

    def round_record(self) -> dict[str, Any]:
        return dict(self._record)

    def stop_reason(self) -> str | None:
        return self._account.stop_reason()

    def state_dict(self) -> dict[str, Any]:
        return self._account.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._account.load_state_dict(state)
