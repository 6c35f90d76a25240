"""OpenFed's names for fedloom's aggregate triggers and stop rule behave as fedloom's own:
``AggregateCount(k)`` as FedBuff's ``buffer_size = k``, ``AggregatePeriod(t)`` as
``every_seconds = t``, ``StopAtVersion(n)`` as ``rounds = n``."""

from __future__ import annotations

from typing import Any

import torch
from conftest import make_tiny_task

import fedloom.adapters as adapters
from fedloom import FedAvg, Federation
from fedloom.adapters.openfed import AggregateCount, AggregatePeriod, StopAtVersion
from fedloom.backend import BackendBase
from fedloom.federation import triggers
from fedloom.federation.async_loop import AsyncFederation
from fedloom.strategies import FedBuff
from fedloom.update import ClientUpdate


class RoundRobinClients(BackendBase):
    """Clients 0..5 in turn, each moving the version it trains on by a fixed, client-specific
    step: updates are a deterministic function of (client, version), as training is."""

    def __init__(self) -> None:
        self.versions: dict[int, torch.Tensor] = {}
        self.turn = 0
        self.sent: list[tuple[int, int]] = []  # (client, version) of every update

    def available_clients(self, round: int) -> list[int]:
        return list(range(6))

    def publish(self, params: torch.Tensor, version: int) -> None:
        self.versions[version] = params.clone()

    def next_update(self, timeout: float) -> ClientUpdate | None:
        cid, self.turn = self.turn % 6, self.turn + 1
        version = max(self.versions) - (cid % 2)  # every other client one version behind
        version = max(version, 0)
        base = self.versions[version]
        step = torch.linspace(-1, 1, base.numel()) * 0.01 * (cid + 1)
        self.sent.append((cid, version))
        return ClientUpdate(cid, base + step, cid + 1, {}, version + 1, version)

    def base(self, version: int) -> torch.Tensor | None:
        return self.versions.get(version)

    # the synchronous loop's hooks, which the async loop never calls
    def distribute(self, *args: Any) -> None:
        raise AssertionError("not a synchronous run")

    collect = distribute

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def run_async(strategy: FedBuff, rounds: int = 4, **kwargs: Any) -> tuple[Any, RoundRobinClients]:
    backend = RoundRobinClients()
    fed = AsyncFederation(make_tiny_task(), strategy, backend, rounds=rounds, seed=3, **kwargs)
    return fed.run(), backend


def test_aggregate_count_triggers_as_fedbuffs_buffer_size() -> None:
    plain, plain_backend = run_async(FedBuff(buffer_size=2))
    triggered, backend = run_async(FedBuff(buffer_size=100), triggers=[AggregateCount(2)])
    assert torch.equal(plain.params, triggered.params)
    assert backend.sent == plain_backend.sent and len(backend.sent) == 8  # 2 updates a version
    assert [r["clients"] for r in triggered.history] == [2, 2, 2, 2]
    # without the trigger the same strategy waits for its own 3
    three, _ = run_async(FedBuff(buffer_size=3))
    assert [r["clients"] for r in three.history] == [3, 3, 3, 3]


def test_aggregate_period_is_every_seconds() -> None:
    backend = RoundRobinClients()
    fed = AsyncFederation(make_tiny_task(), FedBuff(), backend, every_seconds=2.5, rounds=1)
    assert fed.triggers == [AggregatePeriod(2.5)]
    period = AggregatePeriod(2.5)
    assert not period.due(pending=0, waited=10.0)  # nothing to aggregate
    assert not period.due(pending=3, waited=2.4) and period.due(pending=1, waited=2.5)
    count = AggregateCount(3)
    assert [count.due(n, 0.0) for n in range(5)] == [False, False, False, True, True]


def test_stop_at_version_stops_as_rounds_does() -> None:
    short = Federation(make_tiny_task(), FedAvg(clients_per_round=3), rounds=2, seed=1).run()
    stopped = Federation(
        make_tiny_task(), FedAvg(clients_per_round=3), rounds=6, seed=1,
        callbacks=[StopAtVersion(max_version=2)],
    ).run()  # fmt: skip
    assert torch.equal(short.params, stopped.params)
    assert (stopped.rounds, stopped.stop_reason) == (2, "callback")


def test_the_openfed_names_are_fedlooms_classes_and_check_their_arguments() -> None:
    assert adapters.AggregateCount is triggers.AggregateCount is AggregateCount
    assert adapters.StopAtVersion is triggers.StopAtVersion
    assert adapters.AggregatePeriod is triggers.AggregatePeriod
    for bad in (lambda: AggregateCount(0), lambda: AggregatePeriod(0), lambda: StopAtVersion(0)):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("accepted a trigger that never fires")
