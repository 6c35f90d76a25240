"""Distributed DP: secure aggregation whose sum already carries the central noise.

Each client clips its delta to L2 norm C, quantises it and adds its share of Skellam noise
(:mod:`.skellam`) in the integer domain *before* masking; the SecAgg+ server unmasks only the
noisy sum. No party, the aggregator included, ever holds an un-noised sum, and the released
model carries the noise of central DP-FedAvg: total variance ``(z * sensitivity)^2`` in
quantisation levels, i.e. std ``z * (C + sqrt(d) * step)`` in float units (the ``sqrt(d)``
term pays for stochastic rounding).

Accounting (:class:`~.ddp_account.DDPAccount`): each round as the sampled Gaussian
mechanism of the same variance as the noise in the released sum, with Skellam's RDP excess
recorded. The subsampling amplification is the Gaussian's (q as in central DP); against the
aggregator, who knows the cohort, set ``sampling_rate=1``. The noise of each client derives
here from the run seed (a simulation is reproducible); a deployment
(:class:`~.distributed_net.DeployedDistributedDP`) draws it from each client's own secret
randomness, which the aggregator never learns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ..algorithms.base import RoundPlan, Strategy
from ..seeding import derive_seed
from .accountant import Accountant, Method, check_noise
from .clipping import check_clip_norm, clip_
from .ddp_account import DDPAccount
from .ddp_noise import SkellamShares
from .secagg.compat import check_secagg
from .secagg.config import SecAggConfig
from .secagg.stage import DropoutSchedule, SecureAggregation
from .skellam import skellam


class DistributedDP(SecureAggregation):
    """Clip, add each client's share of the noise, sum securely, account the rounds.

    Args:
        noise_multiplier: z > 0, the summed noise's std in units of the sensitivity.
        clip_norm: C, the L2 bound of each client's delta.
        delta: the delta of the reported (epsilon, delta).
        target_epsilon: stop the run before a round would spend more.
        sampling_rate: q for the accountant; None: cohort / available clients each round.
        accountant: ``"rdp"`` or ``"pld"``.
        dropout_tolerance: share of the cohort that may drop out with the noise still at z:
            each client adds ``1 / ceil((1 - tolerance) * cohort)`` of the variance (fewer
            survivors leave less noise, and the accountant charges what was left).
        clipping_range: the per-coordinate range of the quantiser; None: ``clip_norm``.
        The other arguments are :class:`SecureAggregation`'s.
    """

    key = "privacy"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        *,
        target_epsilon: float | None = None,
        sampling_rate: float | None = None,
        accountant: Method = "rdp",
        dropout_tolerance: float = 0.0,
        num_shares: int | None = None,
        reconstruction_threshold: int | None = None,
        clipping_range: float | None = None,
        quantization_range: int = 2**16,
        modulus: int = 2**32,
        dropout_rate: float = 0.0,
        dropouts: DropoutSchedule | None = None,
    ):
        self.clip_norm = check_clip_norm(clip_norm)
        super().__init__(
            num_shares, reconstruction_threshold,
            self.clip_norm if clipping_range is None else clipping_range,
            quantization_range, modulus, dropout_rate=dropout_rate, dropouts=dropouts,
        )  # fmt: skip
        self.noise_multiplier = check_noise("noise_multiplier", noise_multiplier)
        if self.noise_multiplier == 0:
            raise ValueError("noise_multiplier must be > 0 (without noise use SecureAggregation)")
        self.shares = SkellamShares(self.noise_multiplier, self.clip_norm, dropout_tolerance)
        self.dropout_tolerance = self.shares.dropout_tolerance
        self._account = DDPAccount(
            self.shares, delta, target_epsilon, sampling_rate, accountant
        )
        self.delta, self.target_epsilon = self._account.delta, self._account.target_epsilon
        self.sampling_rate = self._account.sampling_rate

    @property
    def accountant(self) -> Accountant:
        return self._account.accountant

    def check(self, strategy: Strategy) -> None:
        check_secagg(strategy, "privacy.mode = 'distributed'")

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        super().configure(round, plan, available)
        self._account.configure(len(plan.clients), available)

    def client_input(self, delta: torch.Tensor) -> torch.Tensor:
        """The delta clipped to L2 norm C (what bounds one client's share of the sum)."""
        clip_(delta, self.clip_norm)
        return delta

    # -- the noise -------------------------------------------------------------------------
    def sensitivity(self, cfg: SecAggConfig) -> float:
        """One client's largest effect on the integer sum (L2, in levels)."""
        return self.shares.sensitivity(cfg)

    def client_variance(self, cfg: SecAggConfig) -> float:
        """Each client's share of the noise variance, in levels squared."""
        return self.shares.client_variance(cfg, self._account.cohort)

    def check_fits(self, cfg: SecAggConfig) -> None:
        """Refuse a modulus the noisy sum of ``cfg.num_clients`` could wrap around."""
        self.shares.check_fits(cfg, self._account.cohort)

    def client_noise(
        self, round: int, attempt: int, cfg: SecAggConfig
    ) -> Callable[[int], NDArray[np.integer]]:
        self.check_fits(cfg)
        seed, variance, d = self._seed, self.client_variance(cfg), cfg.vector_length
        assert seed is not None

        def noise(client: int) -> NDArray[np.integer]:
            rng = np.random.default_rng(derive_seed(seed, "ddp-noise", round, attempt, client))
            return skellam(rng, variance, d)

        return noise

    # -- accounting ------------------------------------------------------------------------
    def after_round(self, round: int, cfg: SecAggConfig, survivors: int) -> None:
        self._record.update(self._account.released(round, cfg, survivors))

    def stop_reason(self) -> str | None:
        return self._account.stop_reason()

    def state_dict(self) -> dict[str, Any]:
        return self._account.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._account.load_state_dict(state)
