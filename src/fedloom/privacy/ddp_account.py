"""The accounting of distributed DP: each released noisy sum charged to one accountant.

Shared by the simulation's stage (:class:`~.distributed.DistributedDP`) and the network
aggregator's (:class:`~.distributed_net.DeployedDistributedDP`), so a deployment records
the same epsilon as the simulation of the same config.

dp-accounting has no multi-dimensional Skellam (or summed discrete Gaussian) event; its
discrete Gaussian PLD is one-dimensional. Each round is therefore accounted as the sampled
Gaussian mechanism of the same variance, ``z_eff = sqrt(survivors * client variance) /
sensitivity`` (the noise actually in the released sum). Agarwal et al. 2021 (Theorem 3.5)
bound that approximation's error: Skellam's RDP exceeds the Gaussian's by a term of order
1/mu; the relative excess over the accountant's orders is recorded each round
(``skellam_rdp_excess``) and a warning is logged above 1%.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from dp_accounting import rdp

from .accountant import Accountant, Method, budget_stop, check_delta, check_rate
from .ddp_noise import Grid, SkellamShares
from .skellam import rdp_excess

log = logging.getLogger("fedloom")
EXCESS_WARNING = 0.01


class DDPAccount:
    """The privacy spent by the noisy sums of a distributed-DP run, and when to stop.

    Args:
        shares: the noise calibration.
        delta: the delta of the reported (epsilon, delta).
        target_epsilon: stop the run before a round would spend more.
        sampling_rate: q; None: cohort / available clients each round.
        method: ``"rdp"`` or ``"pld"``.
    """

    def __init__(
        self,
        shares: SkellamShares,
        delta: float,
        target_epsilon: float | None = None,
        sampling_rate: float | None = None,
        method: Method = "rdp",
    ):
        if target_epsilon is not None and not (
            isinstance(target_epsilon, int | float) and target_epsilon > 0
        ):
            raise ValueError(f"target_epsilon must be a number > 0, got {target_epsilon!r}")
        self.shares = shares
        self.delta = check_delta(delta)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.sampling_rate = (
            None if sampling_rate is None else check_rate("sampling_rate", sampling_rate)
        )
        self.accountant = Accountant(self.delta, method)
        self.cohort = 0
        self._q: float | None = self.sampling_rate
        self._last_z: float | None = None

    def configure(self, cohort: int, available: int) -> None:
        """A round of ``cohort`` clients sampled from ``available`` starts."""
        self.cohort = cohort
        if self.sampling_rate is None and available:
            self._q = min(1.0, cohort / available)

    def released(self, round: int, cfg: Grid, survivors: int) -> dict[str, Any]:
        """Charge a sum released by ``survivors`` of the cohort; the round's record."""
        if self._q is None:
            raise RuntimeError("DDPAccount: configure(...) was not called")
        sens = self.shares.sensitivity(cfg)
        variance = survivors * self.shares.client_variance(cfg, self.cohort)
        z = math.sqrt(variance) / sens
        self.accountant.step(self._q, z)
        self._last_z = z
        orders = np.asarray(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
        excess = rdp_excess(sens, math.sqrt(cfg.vector_length) * sens, variance, orders)
        if excess > EXCESS_WARNING:
            log.warning(
                "round %d: the Skellam noise's RDP exceeds the Gaussian's by up to %.2g%%; "
                "the recorded epsilon understates it (raise quantization_range)",
                round, 100 * excess,
            )  # fmt: skip
        return dict(
            epsilon=self.accountant.epsilon(),
            clip_norm=self.shares.clip_norm,
            noise_multiplier_effective=z,
            noise_std=math.sqrt(variance) * cfg.step,
            skellam_rdp_excess=excess,
        )

    def stop_reason(self) -> str | None:
        z = min(self.shares.noise_multiplier, self._last_z or math.inf)  # the noise reached
        return budget_stop(self.accountant, self._q, z, self.target_epsilon, self.delta)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"accountant": self.accountant.state_dict()}
        if self._q is not None:
            state["q"] = self._q
        if self._last_z is not None:
            state["last_z"] = self._last_z
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state.get("accountant", {}))
        self._q = float(state["q"]) if "q" in state else self.sampling_rate
        self._last_z = float(state["last_z"]) if "last_z" in state else None
