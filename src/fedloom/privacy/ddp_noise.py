"""How much Skellam noise each client of a distributed-DP round adds: one formula for all.

The simulation's :class:`~.distributed.DistributedDP`, the network aggregator (which sends
these values to its clients) and each deployed client (which checks them and draws its
share with its own secret randomness) compute the same numbers from the same
:class:`SkellamShares`, so what a client adds, what the aggregator decodes and what the
accountant charges cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from .secagg.config import SecAggConfig
from .skellam import fits_modulus, l2_sensitivity, skellam


class Grid(Protocol):
    """The fixed-point grid of a round: a :class:`SecAggConfig`, or a :class:`Levels`."""

    @property
    def step(self) -> float: ...

    @property
    def vector_length(self) -> int: ...


@dataclass(frozen=True)
class Levels:
    """A grid by its values, for whoever accounts a round without its protocol config."""

    step: float
    vector_length: int


@dataclass(frozen=True)
class SkellamShares:
    """Each client's share of noise of std ``noise_multiplier`` sensitivities on the sum.

    ``clip_norm`` bounds each client's delta (L2); ``dropout_tolerance`` is the share of a
    cohort that may drop out with the noise still at ``noise_multiplier``: each client adds
    ``1 / ceil((1 - tolerance) * cohort)`` of the variance. Invalid values raise ValueError
    (a deployed client refuses a round that carries them).
    """

    noise_multiplier: float
    clip_norm: float
    dropout_tolerance: float = 0.0

    def __post_init__(self) -> None:
        z, c, tol = self.noise_multiplier, self.clip_norm, self.dropout_tolerance
        if not (isinstance(z, int | float) and math.isfinite(z) and z > 0):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {z!r}")
        if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
            raise ValueError(f"clip_norm must be a finite number > 0, got {c!r}")
        if not (isinstance(tol, int | float) and 0 <= tol < 1):
            raise ValueError(f"dropout_tolerance must be in [0, 1), got {tol!r}")

    def sensitivity(self, cfg: Grid) -> float:
        """One client's largest effect on the integer sum (L2, in levels)."""
        return l2_sensitivity(self.clip_norm, cfg.step, cfg.vector_length)

    def client_variance(self, cfg: Grid, cohort: int) -> float:
        """Each client's share of the noise variance in a round of ``cohort`` clients, in
        levels squared."""
        share = max(1, math.ceil((1 - self.dropout_tolerance) * max(cohort, 1)))
        return (self.noise_multiplier * self.sensitivity(cfg)) ** 2 / share

    def draw(self, rng: np.random.Generator, cfg: SecAggConfig) -> NDArray[np.int64]:
        """One client's share (integers, one per coordinate)."""
        return skellam(rng, self.client_variance(cfg, cfg.num_clients), cfg.vector_length)

    def check_fits(self, cfg: SecAggConfig, cohort: int | None = None) -> None:
        """Refuse a modulus the noisy sum of ``cfg.num_clients`` could wrap around (each
        client adding its share of a round of ``cohort``, by default ``cfg.num_clients``)."""
        n = cfg.num_clients
        variance = n * self.client_variance(cfg, n if cohort is None else cohort)
        ok, need = fits_modulus(n, cfg.quantization_range, variance, cfg.vector_length, cfg.modulus)
        if not ok:
            raise ConfigError(
                f"privacy.modulus = {cfg.modulus} cannot hold the noisy sum of {n} clients "
                f"without wrapping (it needs 2 * {need:.4g}); lower privacy.quantization_range "
                "or privacy.noise_multiplier, or raise the modulus (at most 2^32)"
            )
