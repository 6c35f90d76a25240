"""Client-level central DP (DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models") as a :class:`~fedloom.stages.Stage`.

The aggregator is trusted to see updates; what the trained model reveals about any one
client is bounded. Each client's delta (update minus the global model) is clipped to L2
norm C, the clipped deltas are summed uniformly and Gaussian noise of std z*C is added to
the sum before it is divided by the planned cohort size, so adding or removing one client
changes the released mean by a bounded amount whatever its data. The accountant turns
(q, z, rounds) into the epsilon at ``delta`` recorded each round, and the run stops before a
round would take it past ``target_epsilon``.

Noise is drawn from a generator seeded by (run seed, round) on the CPU: the same seed gives
the same numbers on any device, and a resumed run equals an uninterrupted one.

With secure aggregation after it (``rounding_step``, the quantiser's step), each client's
contribution to the sum is its clipped delta *stochastically rounded* to the fixed-point
grid: off by less than one step per coordinate, so its L2 norm is at most
``C + sqrt(d) * step``, not C. The stage therefore noises with std
``z * (C + sqrt(d) * step)``: the sensitivity the rounding really leaves, so the accounted z
(and a z calibrated from ``target_epsilon``) keeps its meaning. The extra noise is small
when the grid is fine (``sqrt(d) * step << C``); a coarse grid costs noise, not privacy.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..algorithms.base import RoundPlan, Strategy
from ..seeding import derive_seed
from ..stages import Stage
from ..update import ClientUpdate
from .accountant import (
    Accountant,
    Method,
    budget_stop,
    check_delta,
    check_noise,
    check_rate,
)
from .clipping import AdaptiveClip, check_clip_norm, clip_
from .compat import check_central


class CentralDP(Stage):
    """Clip each update's delta to ``clip_norm``, noise the sum, account the rounds.

    Args:
        noise_multiplier: z, the noise std in units of the clipping norm (0: clip only, no
            guarantee; see :func:`~fedloom.privacy.calibrate_noise_multiplier`).
        clip_norm: C, or the initial C when ``target_quantile`` is set.
        delta: the delta of the reported (epsilon, delta).
        target_quantile: set for adaptive clipping (Andrew et al. 2021): C follows this
            quantile of the update norms; ``clip_learning_rate`` and ``clip_count_stddev``
            are its step size and count noise.
        target_epsilon: stop the run before a round would spend more.
        sampling_rate: q for the accountant (clients per round / clients); None: measured
            each round as cohort / available clients (the budget check then starts after
            the first round).
        accountant: ``"rdp"`` or ``"pld"`` (see :class:`~fedloom.privacy.Accountant`).
        rounding_step: the fixed-point step of a secure aggregation that rounds each clipped
            delta after this stage (0: none); the sensitivity becomes ``C + sqrt(d) * step``.
    """

    key = "privacy"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        *,
        target_quantile: float | None = None,
        clip_learning_rate: float = 0.2,
        clip_count_stddev: float | None = None,
        target_epsilon: float | None = None,
        sampling_rate: float | None = None,
        accountant: Method = "rdp",
        rounding_step: float = 0.0,
    ):
        if not (isinstance(rounding_step, int | float) and 0 <= rounding_step < math.inf):
            raise ValueError(f"rounding_step must be a finite number >= 0, got {rounding_step!r}")
        self.rounding_step = float(rounding_step)
        self.noise_multiplier = check_noise("noise_multiplier", noise_multiplier)
        self.clip_norm = check_clip_norm(clip_norm)
        self.delta = check_delta(delta)
        if target_epsilon is not None and not (
            isinstance(target_epsilon, int | float) and target_epsilon > 0
        ):
            raise ValueError(f"target_epsilon must be a number > 0, got {target_epsilon!r}")
        if target_epsilon is not None and self.noise_multiplier == 0:
            raise ValueError("target_epsilon needs noise_multiplier > 0 (no noise: no budget)")
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.sampling_rate = (
            None if sampling_rate is None else check_rate("sampling_rate", sampling_rate)
        )
        self._adaptive = (
            None
            if target_quantile is None
            else AdaptiveClip(clip_norm, target_quantile, clip_learning_rate, clip_count_stddev)
        )
        if self._adaptive is not None and clip_count_stddev is not None:
            self._adaptive.delta_noise_multiplier(self.noise_multiplier, 1)  # refused early
        self.accountant = Accountant(self.delta, accountant)
        self._seed: int | None = None
        self._cohort = 0
        self._q: float | None = self.sampling_rate
        self._used_clip = self.clip_norm
        self._sensitivity = self.clip_norm
        self._scratch: torch.Tensor | None = None

    @property
    def current_clip_norm(self) -> float:
        """C for the next round (moves with adaptive clipping)."""
        return self._adaptive.clip_norm if self._adaptive is not None else self.clip_norm

    def check(self, strategy: Strategy) -> None:
        check_central(strategy)

    def start(self, seed: int) -> None:
        self._seed = seed

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        self._cohort = len(plan.clients)
        if self.sampling_rate is None and available:
            self._q = min(1.0, self._cohort / available)
        if self._adaptive is not None:
            self._adaptive.begin()
            self._adaptive.delta_noise_multiplier(self.noise_multiplier, self._cohort)

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        """The update with its delta clipped to C (a new buffer, reused for the next one)."""
        if self._scratch is None or self._scratch.shape != global_params.shape:
            self._scratch = torch.empty_like(global_params)
        delta = torch.sub(update.params, global_params, out=self._scratch)
        norm = clip_(delta, self.current_clip_norm)
        if self._adaptive is not None:
            self._adaptive.observe(norm)
        return ClientUpdate(
            update.client_id,
            delta.add_(global_params),
            update.num_samples,
            update.metrics,
            update.round,
            update.version,
        )

    def sensitivity(self, clip: float, length: int) -> float:
        """One client's largest effect on the sum: C, plus ``sqrt(d) * step`` of rounding
        when a secure aggregation rounds the clipped deltas (see the module's text)."""
        return clip + math.sqrt(length) * self.rounding_step

    def process_aggregate(self, round: int, total: torch.Tensor, count: int) -> torch.Tensor:
        """Add N(0, (z S)^2) to the sum, S the sensitivity (C, plus the rounding's share);
        with adaptive clipping z is the delta's share, and a second draw noises the
        unclipped count. Account the round."""
        if self._seed is None:
            raise RuntimeError("CentralDP: start(seed) was not called")
        gen = torch.Generator().manual_seed(derive_seed(self._seed, "privacy-noise", round))
        clip = self.current_clip_norm
        sens = self.sensitivity(clip, total.numel())
        z = self.noise_multiplier
        if self._adaptive is not None:
            z = self._adaptive.delta_noise_multiplier(z, self._cohort)
        if z > 0:
            noise = torch.randn(total.shape, generator=gen, dtype=total.dtype)
            total.add_(noise.to(total.device), alpha=z * sens)
        if self._adaptive is not None:
            draw = float(torch.randn(1, generator=gen, dtype=torch.float64))
            self._adaptive.update(self._cohort, draw)
        self._used_clip, self._sensitivity = clip, sens
        if self._q is None:
            raise RuntimeError("CentralDP: configure(...) was not called")
        self.accountant.step(self._q, self.noise_multiplier)
        return total

    def round_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"clip_norm": self._used_clip}
        if self.rounding_step > 0:
            record["sensitivity"] = self._sensitivity
        if self.noise_multiplier > 0:
            record["epsilon"] = self.accountant.epsilon()
        return record

    def stop_reason(self) -> str | None:
        return budget_stop(
            self.accountant, self._q, self.noise_multiplier, self.target_epsilon, self.delta
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "accountant": self.accountant.state_dict(),
            "used_clip": self._used_clip,
        }
        if self._q is not None:
            state["q"] = self._q
        if self._adaptive is not None:
            state["adaptive"] = self._adaptive.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state.get("accountant", {}))
        self._used_clip = float(state.get("used_clip", self.clip_norm))
        self._q = float(state["q"]) if "q" in state else self.sampling_rate
        if self._adaptive is not None:
            self._adaptive.load_state_dict(state.get("adaptive", {}))
