"""Clipping a client's update to an L2 norm bound, fixed or adaptive.

Clipping bounds one client's influence on the sum (its sensitivity), which is what the
Gaussian noise is scaled to. A fixed bound C needs tuning per model; adaptive clipping
(Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping") lets C follow
a target quantile of the update norms: each round C <- C * exp(-eta * (b - gamma)), b the
share of clients whose norm was <= C. Because C shapes the released model, b is itself
released with Gaussian noise (std ``count_stddev`` on the count of clients), and that noise
is charged to the budget (see :meth:`AdaptiveClip.delta_noise_multiplier`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..algorithms.base import Stateful


def clip_(delta: torch.Tensor, clip_norm: float) -> float:
    """Scale ``delta`` in place to L2 norm at most ``clip_norm``; its norm before clipping.

    The norm is computed in float64, so the bound holds to the buffer's rounding."""
    norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
    if norm > clip_norm:
        delta.mul_(clip_norm / norm)
    return norm


def check_clip_norm(value: float) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ValueError(f"clip_norm must be a finite number > 0, got {value!r}")
    return float(value)


class AdaptiveClip(Stateful):
    """The clipping norm tracking the ``target_quantile`` of the update norms, privately.

    Args:
        clip_norm: the initial C.
        target_quantile: gamma in (0, 1), the share of updates that should be unclipped.
        learning_rate: eta of the geometric update (the paper's default 0.2).
        count_stddev: std of the noise on the unclipped count; None: cohort / 20 (the
            paper's choice), set from the first round's cohort.
    """

    def __init__(
        self,
        clip_norm: float,
        target_quantile: float,
        learning_rate: float = 0.2,
        count_stddev: float | None = None,
    ):
        self.clip_norm = check_clip_norm(clip_norm)
        if isinstance(target_quantile, bool) or not (
            isinstance(target_quantile, int | float) and 0 < target_quantile < 1
        ):
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        self.target_quantile = float(target_quantile)
        if not (isinstance(learning_rate, int | float) and 0 < learning_rate < math.inf):
            raise ValueError(
                f"clip_learning_rate must be a finite number > 0, got {learning_rate!r}"
            )
        self.learning_rate = float(learning_rate)
        if count_stddev is not None and not (
            isinstance(count_stddev, int | float) and 0 < count_stddev < math.inf
        ):
            raise ValueError(f"clip_count_stddev must be a finite number > 0, got {count_stddev!r}")
        self.count_stddev = None if count_stddev is None else float(count_stddev)
        self._unclipped = 0.0

    def stddev(self, cohort: int) -> float:
        """The count noise's std (``count_stddev``, else cohort / 20)."""
        return self.count_stddev if self.count_stddev is not None else max(cohort, 1) / 20

    def delta_noise_multiplier(self, noise_multiplier: float, cohort: int) -> float:
        """The multiplier for the update sum so that it and the count together cost as one
        Gaussian mechanism at ``noise_multiplier`` (the paper's Theorem 1: the count has
        sensitivity 1/2 once centred, z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2)."""
        if noise_multiplier == 0:
            return 0.0
        sigma_b = self.stddev(cohort)
        if 2 * sigma_b <= noise_multiplier:
            raise ValueError(
                f"privacy.clip_count_stddev = {sigma_b:g} is too small for privacy."
                f"noise_multiplier = {noise_multiplier:g}: adaptive clipping needs "
                f"2 * clip_count_stddev > noise_multiplier (more clients per round, or a "
                "larger clip_count_stddev)"
            )
        return float((noise_multiplier**-2 - (2 * sigma_b) ** -2) ** -0.5)

    def begin(self) -> None:
        self._unclipped = 0.0

    def observe(self, norm: float) -> None:
        """Count one update's norm against the current C (before it is clipped), centred:
        b - 1/2, so adding or removing a client moves the count by 1/2, the sensitivity
        :meth:`delta_noise_multiplier` accounts (uncentred it would be 1)."""
        self._unclipped += int(norm <= self.clip_norm) - 0.5

    def update(self, cohort: int, noise: float) -> None:
        """Move C after the round: ``noise`` is a standard normal draw scaled here."""
        share = (self._unclipped + noise * self.stddev(cohort)) / max(cohort, 1) + 0.5
        self.clip_norm *= math.exp(-self.learning_rate * (share - self.target_quantile))

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
