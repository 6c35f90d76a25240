"""The stage list around a strategy: per-update stages stream into the strategy unchanged,
and a stage's record figures and stop reason reach the round loop."""

from __future__ import annotations

from typing import Any

import torch
from conftest import make_tiny_task

from fedloom import FedAdam, FedAvg, Federation
from fedloom.privacy import Stage, Staged
from fedloom.update import ClientUpdate


class Counting(Stage):
    """Counts the updates it sees and stops the run after ``limit`` of them."""

    key = "counting"

    def __init__(self, limit: int = 10**9):
        self.limit, self.seen = limit, 0

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        self.seen += 1
        return update

    def round_record(self) -> dict[str, Any]:
        return {"updates_seen": self.seen}

    def stop_reason(self) -> str | None:
        return f"counting.limit = {self.limit} reached" if self.seen >= self.limit else None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])


def run(strategy, rounds: int = 3) -> Any:
    return Federation(make_tiny_task(), strategy, rounds=rounds, seed=3).run()


def test_per_update_stages_leave_the_strategy_as_it_was():
    for make in (lambda: FedAvg(fraction=0.5), lambda: FedAdam(0.05, fraction=0.5)):
        plain = run(make())
        staged = run(Staged(make(), [Counting(), Counting()]))
        assert torch.equal(plain.params, staged.params)
        assert [r["updates_seen"] for r in staged.history] == [3, 6, 9]


def test_a_stage_stops_the_run_with_its_reason_before_the_next_round():
    result = run(Staged(FedAvg(fraction=0.5), [Counting(limit=5)]), rounds=10)
    assert result.rounds == 2 and result.stop_reason == "counting.limit = 5 reached"


def test_the_state_holds_the_strategy_and_every_stage():
    s = Staged(FedAdam(0.05, fraction=0.5), [Counting()])
    run(s, rounds=2)
    state = s.state_dict()
    assert state["stages"] == [{"seen": 6}] and state["strategy"]["steps"] == 2
    fresh = Staged(FedAdam(0.05, fraction=0.5), [Counting()])
    fresh.load_state_dict(state)
    assert fresh.stages[0].seen == 6 and fresh.inner.steps == 2
