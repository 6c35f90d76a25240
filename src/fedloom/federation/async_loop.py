"""The asynchronous loop: clients train whenever idle, on whatever version is newest.

One "round" here is one new global version, so recording, checkpoints, evaluation and stop
rules are the synchronous loop's own. Aggregate triggers: the strategy's count (FedBuff's
K updates, FedAsync's every update), ``every_seconds`` (OpenFed's time trigger) or any of
``triggers`` (:mod:`.triggers`: OpenFed's ``AggregateCount``, ``AggregatePeriod``); stop
conditions: ``rounds`` versions (OpenFed's max version) or the target metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch

from ..algorithms.asynchronous import AsyncStrategy
from ..params import ParamSpec
from ..rounds import RoundTally
from ..task import Task
from ..update import ClientUpdate
from .loop import Federation, RoundState
from .triggers import AggregatePeriod, AggregateTrigger

log = logging.getLogger("fedloom")


class AsyncBackend(Protocol):
    def available_clients(self, round: int) -> list[int]: ...
    def publish(self, params: torch.Tensor, version: int) -> None: ...
    def next_update(self, timeout: float) -> ClientUpdate | None: ...
    def base(self, version: int) -> torch.Tensor | None: ...


class AsyncFederation(Federation):
    """Like :class:`Federation`, with an :class:`AsyncStrategy` and an async backend.

    Args (beyond Federation's):
        every_seconds: also make a new version when this much time passed since the last one
            and at least one update is pending (an :class:`AggregatePeriod` trigger).
        triggers: more rules that make a new version once one is due, beside the strategy's
            own count (e.g. ``AggregateCount(2)``).
    """

    def __init__(
        self,
        task: Task,
        strategy: AsyncStrategy,
        backend: AsyncBackend | Callable[[ParamSpec], AsyncBackend],
        *,
        every_seconds: float | None = None,
        triggers: Sequence[AggregateTrigger] = (),
        **kwargs: Any,
    ):
        if every_seconds is not None and every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        super().__init__(task, strategy, backend, **kwargs)  # type: ignore[arg-type]
        # the loop's strategy and backend (made by a factory), typed for what this loop calls
        self.async_strategy = strategy
        self.async_backend = cast(AsyncBackend, self.backend)
        self.every_seconds = every_seconds
        period = [AggregatePeriod(every_seconds)] if every_seconds is not None else []
        self.triggers: list[AggregateTrigger] = [*triggers, *period]
        self._published = -1

    def run_round(self, rnd: int) -> dict[str, Any]:
        tally = RoundTally()
        strategy, backend = self.async_strategy, self.async_backend
        self._state(RoundState.START_ROUND, rnd)
        if self._published != rnd - 1:
            backend.available_clients(rnd)  # the check-in quorum, before the first model
            backend.publish(self.params, rnd - 1)
            self._published = rnd - 1
        self._state(RoundState.DISTRIBUTE, rnd)
        self._state(RoundState.TRAIN, rnd)
        stale: list[int] = []
        self._bytes_up = 0
        saved = self._snapshot()
        first, said = True, 0
        while not strategy.ready():
            waited = tally.seconds
            if any(t.due(strategy.pending(), waited) for t in self.triggers):
                break
            u = backend.next_update(0.1)
            if u is None:
                if int(waited / 30) > said:
                    said = int(waited / 30)
                    log.info("version %d waits for updates (%d in so far)", rnd, tally.accepted)
                continue
            if first:
                self._state(RoundState.UPLOAD, rnd)
                first = False
            staleness = (rnd - 1) - u.version
            self._bytes_up += self.upload_size(u)
            error = self._check(u, peaks=tally.peaks)
            base = None
            if error is None and 0 <= staleness <= strategy.max_staleness:
                base = backend.base(u.version)
            if error is None and base is None:
                error = f"staleness {staleness} outside [0, {strategy.max_staleness}] or too old"
            for cb in self.callbacks:
                cb.on_update(self, u, error)
            if error or base is None:
                tally.reject()
                continue
            strategy.accept(self.params, u, staleness, base)
            stale.append(staleness)
            tally.accept(u)
        self._state(RoundState.AGGREGATE, rnd)
        strategy.apply(self.params)
        poisoned = self._guard_aggregate(rnd, saved, tally)
        self.round = rnd
        backend.publish(self.params, rnd)
        self._published = rnd
        self._state(RoundState.CLOSE_ROUND, rnd)
        record: dict[str, Any] = {
            "round": rnd,
            "version": rnd,
            **tally.counts(),
            "staleness_mean": sum(stale) / len(stale) if stale else 0.0,
            "staleness_max": max(stale, default=0),
            "bytes_up": self._bytes_up,
        }
        if poisoned:
            record["aggregate_rejected"] = poisoned
        return self._close(rnd, record, tally)
