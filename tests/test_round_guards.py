"""The round loop's guards: poisoned aggregates rolled back, far updates rejected, bad metrics
rejected, rounds short of quorum retried or skipped (any backend, any strategy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from conftest import make_tiny_task

from fedloom import Callback, FedAdam, FedAvg, Federation
from fedloom.algorithms.base import RoundPlan
from fedloom.backend import BackendBase
from fedloom.errors import QuorumError
from fedloom.simulation import InProcessClients
from fedloom.update import ClientUpdate


class Tampered(BackendBase):
    """The in-process backend with ``change(round, update)`` applied to each update, and
    :class:`QuorumError` raised before the first update in the rounds of ``short``."""

    def __init__(self, task, change: Callable[[int, ClientUpdate], None], short=()):
        self.inner, self.change, self.short = InProcessClients(task, 0), change, dict(short)
        self.round = 0

    def available_clients(self, round: int) -> list[int]:
        return self.inner.available_clients(round)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self.round = round
        self.inner.distribute(round, plan, global_params)

    def collect(self) -> Iterator[ClientUpdate]:
        if self.short.get(self.round, 0) > 0:
            self.short[self.round] -= 1
            raise QuorumError(f"round {self.round}: short")
        for u in self.inner.collect():
            self.change(self.round, u)
            yield u

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def run(change=lambda r, u: None, strategy=None, rounds=3, **kw) -> Federation:
    task = make_tiny_task()
    short = kw.pop("short", ())
    fed = Federation(
        task,
        strategy or FedAvg(fraction=1.0),
        Tampered(task, change, short),
        rounds=rounds,
        seed=0,
        **kw,
    )
    fed.run()
    return fed


def honest(rounds: int = 3, strategy=None) -> Federation:
    return run(rounds=rounds, strategy=strategy)


@pytest.mark.parametrize("strategy", [lambda: FedAvg(fraction=1.0), lambda: FedAdam(fraction=1.0)])
def test_a_finite_but_huge_update_cannot_poison_the_model(strategy):
    def huge(rnd: int, u: ClientUpdate) -> None:
        if rnd == 2 and u.client_id == 3:
            u.params.fill_(3e38)  # finite; the weighted mean overflows to Inf

    fed = run(huge, strategy())
    assert torch.isfinite(fed.params).all()
    rec = fed.history[1]
    assert "client 3" in rec["aggregate_rejected"] and "rolled back" in rec["aggregate_rejected"]
    assert "aggregate_rejected" not in fed.history[0] and "aggregate_rejected" not in fed.history[2]
    assert (rec["clients"], rec["rejected"], rec["samples"]) == (0, 6, 0)
    # round 2 left the model and the strategy state as round 1 did: rounds 1 and 3 of the
    # attacked run are rounds 1 and 2 of an honest run whose round 2 samples round 3's data
    assert fed.history[2]["clients"] == 6


def test_the_rollback_restores_the_exact_model_of_the_round_before():
    seen: dict[int, torch.Tensor] = {}

    class Spy(Callback):
        def on_round_end(self, fed, record):
            seen[record["round"]] = fed.params.clone()

    def huge(rnd: int, u: ClientUpdate) -> None:
        if rnd == 2 and u.client_id == 0:
            u.params.fill_(-3e38)

    task = make_tiny_task()
    backend = Tampered(task, huge)
    fed = Federation(task, FedAvg(fraction=1.0), backend, rounds=2, seed=0, callbacks=[Spy()])
    fed.run()
    assert torch.equal(seen[2], seen[1])


def test_max_update_norm_rejects_far_updates():
    def far(rnd: int, u: ClientUpdate) -> None:
        if u.client_id == 5:
            u.params.add_(100.0)

    fed = run(far, max_update_norm=50.0)
    assert [r["rejected"] for r in fed.history] == [1, 1, 1]
    assert [r["clients"] for r in fed.history] == [5, 5, 5]
    with pytest.raises(ValueError, match="max_update_norm"):
        run(max_update_norm=float("inf"))


@pytest.mark.parametrize(
    "metrics", [{"loss": "0.5"}, {"loss": float("nan")}, {"loss": [1]}, {"x" * 65: 1.0}]
)
def test_updates_with_bad_metrics_are_rejected(metrics):
    def bad(rnd: int, u: ClientUpdate) -> None:
        if u.client_id == 2:
            u.metrics = dict(metrics)

    fed = run(bad, rounds=1)
    assert fed.history[0]["rejected"] == 1 and fed.history[0]["clients"] == 5


def test_a_short_round_is_retried_and_then_gives_the_same_model():
    retried = run(short={2: 2})  # round 2 short twice, then complete
    assert torch.equal(retried.params, honest().params)
    assert [r["round"] for r in retried.history] == [1, 2, 3]


def test_a_round_short_after_its_retries_is_skipped_with_the_model_unchanged():
    fed = run(short={2: 9}, round_retries=1)
    assert "short" in fed.history[1]["skipped"] and fed.history[1]["clients"] == 0
    assert len(fed.history) == 3 and torch.isfinite(fed.params).all()
    skip = run(short={1: 1}, short_round="skip", rounds=1)
    assert "skipped" in skip.history[0]
    assert torch.equal(skip.params, Federation(make_tiny_task(), FedAvg(), rounds=1).params)


def test_abort_raises_the_quorum_error():
    with pytest.raises(QuorumError):
        run(short={1: 1}, short_round="abort")
    with pytest.raises(ValueError, match="short_round"):
        run(short_round="later")


def test_max_update_norm_is_taken_from_any_strategys_options(tmp_path):
    from fedloom import Experiment

    cfg = {
        "name": "norm",
        "rounds": 1,
        "data": {"dataset": "mnist5k", "num_clients": 4, "partition": "shards"},
        "model": {"name": "logreg"},
        "strategy": {"name": "fedavg", "options": {"max_update_norm": 1e-9}},
        "output": {"dir": tmp_path.as_posix(), "progress": False, "tensorboard": False,
                   "figures": False},
    }  # fmt: skip
    fed = Experiment.from_config(cfg).federation
    assert fed.max_update_norm == 1e-9
    fed.run()
    assert (fed.history[0]["clients"], fed.history[0]["rejected"]) == (0, 4)
