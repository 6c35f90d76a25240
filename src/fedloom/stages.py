"""Update stages: privacy (and later compression) as a list around any strategy.

As pfl-research's postprocessors, a stage sees each client update on the server before it
is combined (clipping) and, if it needs the sum, the sum before it becomes the new model
(noise). :class:`Staged` wraps a strategy with a list of stages and is itself a strategy, so
sampling, server optimisers, checkpoints and the round loop need no special case. A stage
refuses, in :meth:`Stage.check`, a strategy it cannot keep its guarantee with, naming the
config keys, so a wrong combination fails before any training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .algorithms.base import RoundPlan, Stateful, Strategy
from .task import Task
from .update import ClientUpdate


class Stage(Stateful):
    """One step of update processing on the server; every hook is a no-op by default.

    ``key`` names the stage's config section (``"privacy"``) in refusals and records.
    A stage that overrides :meth:`process_aggregate` makes :class:`Staged` sum the round's
    update deltas itself, uniformly (see :class:`Staged`).
    """

    key: ClassVar[str] = "stage"

    def check(self, strategy: Strategy) -> None:
        """Raise ValueError naming the keys when ``strategy`` breaks this stage's guarantee."""
        del strategy

    def start(self, seed: int) -> None:
        """The run seed, before the first round: a stage's randomness derives from it."""
        del seed

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        """The round's plan, sampled from ``available`` clients (e.g. the sampling rate)."""
        del round, plan, available

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        """One accepted client update, before it is combined. May change ``update.params``
        in place: its buffer belongs to the round only."""
        del round, global_params
        return update

    def process_aggregate(self, round: int, total: torch.Tensor, count: int) -> torch.Tensor:
        """The sum of the round's ``count`` processed update deltas (in place allowed)."""
        del round, count
        return total

    def round_record(self) -> dict[str, Any]:
        """Figures for the last round's record (``metrics.jsonl``)."""
        return {}

    def stop_reason(self) -> str | None:
        """Why the run must stop before its next round (a spent budget), or None."""
        return None

    @property
    def sums_updates(self) -> bool:
        return type(self).process_aggregate is not Stage.process_aggregate


class Staged(Strategy):
    """``strategy`` with ``stages`` applied to every round's updates, in list order.

    Without a summing stage the processed updates stream into ``strategy.aggregate`` as they
    come (its own weights and aggregator apply). With one (central DP's noise) the stages
    must see the sum: Staged adds the deltas ``update - global`` uniformly, lets the stages
    process the sum, divides by the round's planned cohort size (a fixed, data-independent
    denominator: McMahan et al. 2018's estimator, so a dropped client shrinks the step and
    never changes the sensitivity) and hands the strategy one update, the global model plus
    that mean delta: FedAvg takes it as its average, the server optimisers as their
    pseudo-gradient. The stages' :meth:`Stage.check` decides which strategies allow that.
    """

    def __init__(self, strategy: Strategy, stages: Sequence[Stage]):
        if isinstance(strategy, Staged):
            raise ValueError("strategy is already Staged: give all stages in one list")
        self.inner = strategy
        self.stages = list(stages)
        for stage in self.stages:
            stage.check(strategy)
        self.clients_per_round, self.fraction = strategy.clients_per_round, strategy.fraction
        self.accepts_partial_work = strategy.accepts_partial_work
        self.client = strategy.client
        self._seed: int | None = None
        self._planned = 0
        self._total: torch.Tensor | None = None

    # -- delegated -----------------------------------------------------------------------------
    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        self.inner.prepare(task, model, seed)
        self.start(seed)

    def start(self, seed: int) -> None:
        """Give the stages the run seed (the round loop does it through :meth:`prepare`)."""
        self._seed = seed
        for stage in self.stages:
            stage.start(seed)

    @property
    def prepares_model(self) -> bool:
        return self.inner.prepares_model

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        return self.inner.client_model(cid, state)

    def cohort_size(self, available: int) -> int:
        return self.inner.cohort_size(available)

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        plan = self.inner.configure(round, available, rng)
        self._planned = len(plan.clients)
        for stage in self.stages:
            stage.configure(round, plan, len(available))
        return plan

    # -- aggregation ---------------------------------------------------------------------------
    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        if self._seed is None:
            raise RuntimeError("Staged: start(seed) or prepare(...) was not called")
        processed = self._processed(round, global_params, updates)
        if not any(stage.sums_updates for stage in self.stages):
            return self.inner.aggregate(round, global_params, processed)
        total, count = self._sum(global_params, processed)
        if count == 0:  # nothing released: the strategy logs and keeps the model
            return self.inner.aggregate(round, global_params, iter(()))
        for stage in self.stages:
            total = stage.process_aggregate(round, total, count)
        total.div_(max(self._planned, count)).add_(global_params)
        mean = ClientUpdate(-1, total, 1, round=round)
        return self.inner.aggregate(round, global_params, iter([mean]))

    def _processed(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> Iterator[ClientUpdate]:
        for u in updates:
            for stage in self.stages:
                u = stage.process_update(round, u, global_params)
            yield u

    def _sum(self, like: torch.Tensor, updates: Iterable[ClientUpdate]) -> tuple[torch.Tensor, int]:
        """The uniform sum of ``update.params - like`` (one buffer, kept across rounds)."""
        if self._total is None or self._total.shape != like.shape:
            self._total = torch.zeros_like(like)
        total = self._total.zero_()
        count = 0
        for u in updates:
            total.add_(u.params).sub_(like)
            count += 1
        return total, count

    # -- records and state -----------------------------------------------------------------
    def round_record(self) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.inner.round_record())
        for stage in self.stages:
            record.update(stage.round_record())
        return record

    def stop_reason(self) -> str | None:
        reasons = [self.inner.stop_reason(), *(stage.stop_reason() for stage in self.stages)]
        return next((r for r in reasons if r is not None), None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.inner.state_dict(),
            "stages": [stage.state_dict() for stage in self.stages],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stages = state.get("stages", [])
        if len(stages) != len(self.stages):
            raise ValueError(f"the state holds {len(stages)} stages, not {len(self.stages)}")
        self.inner.load_state_dict(state.get("strategy", {}))
        for stage, own in zip(self.stages, stages):
            stage.load_state_dict(own)
