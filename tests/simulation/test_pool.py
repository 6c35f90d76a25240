"""ProcessPoolClients: forked workers give bit-identical parameters to the in-process engine."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

import fedloom
from fedloom import ClassificationTask, ClientContext, FedAvg, Federation, TensorDataset
from fedloom.accel import deterministic
from fedloom.simulation.pool import ProcessPoolClients

torch.set_num_threads(1)  # bit-identical to the single-threaded workers

SEED = 3
NUM_CLIENTS = 12
FEATURES = 20


def dataset(n: int = 600, n_test: int = 100) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, FEATURES, generator=g) * 2
    y = torch.randint(0, 4, (n + n_test,), generator=g)
    x = centers[y] + torch.randn(n + n_test, FEATURES, generator=g)
    return TensorDataset("rand", x[:n], y[:n], x[n:], y[n:], 4)


def parts() -> list[torch.Tensor]:
    sizes = [30 + 5 * (i % 4) for i in range(NUM_CLIENTS)]  # unequal clients
    out, start = [], 0
    for s in sizes:
        out.append(torch.arange(start, start + s))
        start += s
    return out


def mlp() -> nn.Module:
    return fedloom.build_model("mlp", (FEATURES,), 4, hidden=16)


def make_task(cls: type[ClassificationTask] = ClassificationTask, **kw: Any) -> ClassificationTask:
    kw.setdefault("lr", 0.1)
    kw.setdefault("batch_size", 8)
    return cls(mlp, dataset(), parts(), **kw)


def run(task: ClassificationTask, backend: Any = None, rounds: int = 3) -> Federation:
    fed = Federation(task, FedAvg(clients_per_round=5), backend=backend, rounds=rounds, seed=SEED)
    fed.run()
    return fed


@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9, "local_epochs": 2}])
def test_pool_matches_in_process_bitwise(kw: dict[str, Any]) -> None:
    task = make_task(**kw)
    ref = run(task)
    with ProcessPoolClients(task, SEED, workers=2) as pool:
        fed = run(task, pool)
        assert len(pool.processes) == 2
        assert fed.backend.state_dict() == {"clients": {}}
    assert torch.equal(fed.params, ref.params)
    assert [h["clients"] for h in fed.history] == [5, 5, 5]
    assert fed.history[-1]["train_loss"] == ref.history[-1]["train_loss"]


class KeepsOptimizer(ClassificationTask):
    keep_optimizer_state = True


def test_pool_keeps_per_client_state_in_workers() -> None:
    task = make_task(KeepsOptimizer, momentum=0.9)
    ref = run(task)
    with ProcessPoolClients(task, SEED, workers=3) as pool:
        fed = run(task, pool)
        state = pool.state_dict()["clients"]
        assert set(state) == set(ref.backend.state_dict()["clients"])
        assert torch.equal(fed.params, ref.params)
        pool.load_state_dict({"clients": state})  # round trip back into the workers
        assert set(pool.state_dict()["clients"]) == set(state)


class FailsForClient3(ClassificationTask):
    def train_step(self, model: nn.Module, batch: Any, ctx: ClientContext) -> torch.Tensor:
        if ctx.client_id == 3:
            raise ValueError("boom in client 3")
        return super().train_step(model, batch, ctx)


def test_worker_error_surfaces_as_client_error_and_close_stops_workers() -> None:
    task = make_task(FailsForClient3)
    pool = ProcessPoolClients(task, SEED, workers=2)
    fed = Federation(task, FedAvg(clients_per_round=NUM_CLIENTS), backend=pool, rounds=2)
    with pytest.raises(fedloom.ClientError) as info:
        fed.run()
    assert info.value.client_id == 3
    assert "client 3" in str(info.value) and "boom in client 3" in str(info.value)
    procs = pool.processes
    assert procs and all(p.is_alive() for p in procs)
    pool.close()
    assert not any(p.is_alive() for p in procs)
    assert pool.processes == []


class NeedsDeterminism(ClassificationTask):
    """Trains only where deterministic algorithms are on: a worker that did not take the
    parent's setting along fails its clients."""

    def train_step(self, model: nn.Module, batch: Any, ctx: ClientContext) -> torch.Tensor:
        if not torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("deterministic algorithms are off in this worker")
        return super().train_step(model, batch, ctx)


def test_pool_with_spawn_matches_in_process_and_takes_determinism_along() -> None:
    """What a CUDA task gets (fork is refused there): the task pickled to fresh interpreters.
    Its model_fn must pickle by name, so it is fedloom's own builder here, not a lambda."""
    model_fn = partial(fedloom.build_model, "mlp", (FEATURES,), 4, hidden=16)
    task = NeedsDeterminism(model_fn, dataset(), parts(), lr=0.1, batch_size=8)
    with deterministic(True):
        ref = run(task)
        with ProcessPoolClients(task, SEED, workers=2, start_method="spawn") as pool:
            assert pool.start_method == "spawn" and pool.worker_device(0) is None
            fed = run(task, pool)
            assert len(pool.processes) == 2
    assert torch.equal(fed.params, ref.params)
    assert fed.history[-1]["train_loss"] == ref.history[-1]["train_loss"]


def test_pool_start_method() -> None:
    task = make_task()
    assert ProcessPoolClients(task, SEED).start_method == "fork"  # a CPU task forks
    with pytest.raises(ValueError, match="start_method must be fork, spawn or forkserver"):
        ProcessPoolClients(task, SEED, start_method="thread")
