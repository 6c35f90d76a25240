"""Skellam noise for distributed DP (Agarwal, Kairouz, Liu 2021): the integer arithmetic.

Skellam(mu, mu), the difference of two Poisson(mu) draws, has variance 2 mu and is closed
under summation: m clients adding Skellam(mu_i, mu_i) put exactly Skellam(sum mu_i, ...) on
the sum, so each client adds 1/m of the variance and the securely aggregated sum carries the
whole. Everything here is in quantisation levels (one level = ``step`` in float units).

Sensitivity: a client's delta clipped to L2 norm C becomes levels ``x / step + (L - 1) / 2``
rounded stochastically, each coordinate off by less than one level, so its centred integer
vector has L2 norm at most ``C / step + sqrt(d)``: adding or removing one client moves the
decoded sum by at most that many levels (L1: at most ``sqrt(d)`` times it).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

WRAP_PROBABILITY = 1e-12  # allowed chance that a round's noisy sum wraps the modulus


def l2_sensitivity(clip_norm: float, step: float, length: int) -> float:
    """One client's largest effect on the integer sum, in levels (L2)."""
    return clip_norm / step + math.sqrt(length)


def skellam(rng: np.random.Generator, variance: float, length: int) -> NDArray[np.int64]:
    """``length`` draws of Skellam(mu, mu) with ``2 mu = variance``."""
    mu = variance / 2
    draws: NDArray[np.int64] = rng.poisson(mu, length).astype(np.int64)
    draws -= rng.poisson(mu, length).astype(np.int64)
    return draws


def tail_bound(variance: float, length: int, p: float = WRAP_PROBABILITY) -> float:
    """t with P(some |coordinate| of the summed noise >= t) <= p over ``length`` coordinates.

    Bernstein's inequality for a sum of independent terms within 1 of their mean (the
    Poisson draws are limits of such sums): P(|N| >= t) <= 2 exp(-t^2 / (2 (v + t/3))),
    and a union bound over the coordinates."""
    log_term = math.log(2 * length / p)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * log_term * variance)


def fits_modulus(
    clients: int, levels: int, variance: float, length: int, modulus: int
) -> tuple[bool, float]:
    """Whether the noisy sum of ``clients`` stays within half a modulus of its centre (then
    :func:`~fedloom.privacy.secagg.decode_centred` recovers it), and the room it needs."""
    need = math.ceil(clients * (levels - 1) / 2) + tail_bound(variance, length)
    return need < modulus / 2, need


def rdp_excess(l2: float, l1: float, variance: float, orders: NDArray[np.float64]) -> float:
    """How far the Skellam mechanism's RDP bound exceeds the Gaussian one of equal variance,
    as the largest relative excess over ``orders``.

    Agarwal et al. 2021 (Theorem 3.5): Skellam(mu, mu) noise on a sum of L2 sensitivity
    ``l2`` and L1 sensitivity ``l1`` is (a, eps)-RDP with
    ``eps <= a l2^2 / (4 mu) + min(((2a - 1) l2^2 + 6 l1) / (16 mu^2), 3 l1 / (4 mu))``;
    the first term is the Gaussian mechanism's at variance 2 mu. The excess is of order
    1 / mu: negligible when the noise spans many quantisation levels."""
    mu = variance / 2
    gaussian = orders * l2**2 / (4 * mu)
    extra = np.minimum(((2 * orders - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
    return float(np.max(extra / gaussian))
