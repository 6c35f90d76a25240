"""Distributed DP: secure aggregation whose sum already carries the central noise.

Each client clips its delta to L2 norm C, quantises it and adds its share of Skellam noise
(:mod:`.skellam`) in the integer domain *before* masking; the SecAgg+ server unmasks only the
noisy sum. No party, the aggregator included, ever holds an un-noised sum, and the released
model carries the noise of central DP-FedAvg: total variance ``(z * sensitivity)^2`` in
quantisation levels, i.e. std ``z * (C + sqrt(d) * step)`` in float units (the ``sqrt(d)``
term pays for stochastic rounding).

Accounting: dp-accounting has no multi-dimensional Skellam (or summed discrete Gaussian)
event; its discrete Gaussian PLD is one-dimensional. Each round is therefore accounted with
the project's :class:`~.accountant.Accountant` as the sampled Gaussian mechanism of the same
variance, ``z_eff = sqrt(survivors * client variance) / sensitivity`` (the noise actually in
the released sum). That is an approximation whose error Agarwal et al. 2021 (Theorem 3.5)
bound: Skellam's RDP exceeds the Gaussian's by a term of order 1/mu, ``mu`` the Skellam
parameter; the relative excess over the accountant's orders is recorded each round
(``skellam_rdp_excess``) and a warning is logged above 1%. It is tiny whenever the noise
spans many quantisation levels (std >> 1 level), the regime the defaults put it in. The
subsampling amplification is the Gaussian's (q as in central DP); against the aggregator,
who knows the cohort, set ``sampling_rate=1``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from dp_accounting import rdp
from numpy.typing import NDArray

from ..algorithms.base import RoundPlan, Strategy
from ..errors import ConfigError
from ..seeding import derive_seed
from .accountant import (
    Accountant,
    Method,
    budget_stop,
    check_delta,
    check_noise,
    check_rate,
)
from .clipping import check_clip_norm, clip_
from .secagg.compat import check_secagg
from .secagg.config import SecAggConfig
from .secagg.stage import DropoutSchedule, SecureAggregation
from .skellam import fits_modulus, l2_sensitivity, rdp_excess, skellam

log = logging.getLogger("fedloom")
EXCESS_WARNING = 0.01


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
        if target_epsilon is not None and not (
            isinstance(target_epsilon, int | float) and target_epsilon > 0
        ):
            raise ValueError(f"target_epsilon must be a number > 0, got {target_epsilon!r}")
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.delta = check_delta(delta)
        self.sampling_rate = (
            None if sampling_rate is None else check_rate("sampling_rate", sampling_rate)
        )
        if not 0 <= dropout_tolerance < 1:
            raise ValueError(f"dropout_tolerance must be in [0, 1), got {dropout_tolerance!r}")
        self.dropout_tolerance = float(dropout_tolerance)
        self.accountant = Accountant(self.delta, accountant)
        self._q: float | None = self.sampling_rate
        self._cohort = 0
        self._last_z: float | None = None

    def check(self, strategy: Strategy) -> None:
        check_secagg(strategy, "privacy.mode = 'distributed'")

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        super().configure(round, plan, available)
        self._cohort = len(plan.clients)
        if self.sampling_rate is None and available:
            self._q = min(1.0, self._cohort / available)

    def client_input(self, delta: torch.Tensor) -> torch.Tensor:
        """The delta clipped to L2 norm C (what bounds one client's share of the sum)."""
        clip_(delta, self.clip_norm)
        return delta

    # -- the noise -------------------------------------------------------------------------
    def sensitivity(self, cfg: SecAggConfig) -> float:
        """One client's largest effect on the integer sum (L2, in levels)."""
        return l2_sensitivity(self.clip_norm, cfg.step, cfg.vector_length)

    def client_variance(self, cfg: SecAggConfig) -> float:
        """Each client's share of the noise variance, in levels squared."""
        share = max(1, math.ceil((1 - self.dropout_tolerance) * max(self._cohort, 1)))
        return (self.noise_multiplier * self.sensitivity(cfg)) ** 2 / share

    def check_fits(self, cfg: SecAggConfig) -> None:
        """Refuse a modulus the noisy sum of ``cfg.num_clients`` could wrap around."""
        variance = cfg.num_clients * self.client_variance(cfg)
        ok, need = fits_modulus(
            cfg.num_clients, cfg.quantization_range, variance, cfg.vector_length, cfg.modulus
        )
        if not ok:
            raise ConfigError(
                f"privacy.modulus = {cfg.modulus} cannot hold the noisy sum of "
                f"{cfg.num_clients} clients without wrapping (it needs 2 * {need:.4g}); "
                "lower privacy.quantization_range or privacy.noise_multiplier, or raise the "
                "modulus (at most 2^32)"
            )

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
        variance = survivors * self.client_variance(cfg)
        sens = self.sensitivity(cfg)
        z = math.sqrt(variance) / sens
        if self._q is None:
            raise RuntimeError("DistributedDP: configure(...) was not called")
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
        self._record.update(
            epsilon=self.accountant.epsilon(),
            clip_norm=self.clip_norm,
            noise_multiplier_effective=z,
            noise_std=math.sqrt(variance) * cfg.step,
            skellam_rdp_excess=excess,
        )

    def stop_reason(self) -> str | None:
        z = min(self.noise_multiplier, self._last_z or math.inf)  # the noise actually reached
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
