"""SCAFFOLD against Algorithm 1 worked by hand, round 1 == FedAvg, rejected updates, BatchNorm
buffers, checkpoint resume, the backends (process pool refuses it, vectorised falls back), the
registry and config, and a short run on the tiny task."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed, tiny_dataset, tiny_parts
from quadratic import REL, QuadraticTask, grad, sgd
from torch import nn

from fedloom import (
    ClassificationTask,
    ClientError,
    ClientUpdate,
    ConfigError,
    FedAvg,
    Federation,
    FedloomError,
    ProcessPoolClients,
    VectorizedClients,
)
from fedloom.algorithms.scaffold import ControlVariates, Scaffold
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]
LR, K, W0 = 0.1, 3, 0.5


def by_hand(cohorts, option, eta_g, weighted):
    """Algorithm 1 with Python floats: (x, c, [c_i]) after the given cohorts."""
    n_total = len(DATA)
    x, c, ci = W0, 0.0, [0.0] * n_total
    for cohort in cohorts:
        moves, weights, dcs = [], [], []
        for i in cohort:
            pts = DATA[i]
            y = sgd(x, pts, LR, K, extra=lambda w, d=c - ci[i]: d)  # g_i(y) - c_i + c
            new = grad(x, pts) if option == "I" else ci[i] - c + (x - y) / (K * LR)
            dcs.append(new - ci[i])
            ci[i] = new
            moves.append(y - x)
            weights.append(len(pts) if weighted else 1)
        x += eta_g * sum(w * m for w, m in zip(weights, moves)) / sum(weights)
        c += sum(dcs) / n_total
    return x, c, ci


@pytest.mark.parametrize("option", ["I", "II"])
@pytest.mark.parametrize(
    "eta_g, weighted, per_round", [(1.0, False, 2), (0.5, False, 3), (1.5, True, 2)]
)
def test_two_rounds_match_algorithm_1_worked_by_hand(option, eta_g, weighted, per_round):
    task = QuadraticTask(DATA, lr=LR, w0=W0)
    task.local_epochs = K  # one full-batch step per epoch: K local steps
    s = Scaffold(server_lr=eta_g, option=option, weighted=weighted, clients_per_round=per_round)
    fed = Federation(task, s, rounds=2, seed=4)
    cohorts = []
    for r in (1, 2):
        fed.run_round(r)
        cohorts.append(list(fed.plan.clients))
    assert set(cohorts[0]) & set(cohorts[1])  # some client corrects with its own c_i != 0
    x, c, ci = by_hand(cohorts, option, eta_g, weighted)
    assert c != 0
    assert float(fed.params[0]) == pytest.approx(x, rel=REL, abs=REL)
    assert float(s.c[0]) == pytest.approx(c, rel=REL, abs=REL)
    states = fed.backend.states
    assert sorted(states) == sorted(set(cohorts[0]) | set(cohorts[1]))  # one c_i per client
    for i, v in enumerate(ci):
        got = float(states[i]["scaffold_ci"][0]) if i in states else 0.0
        assert got == pytest.approx(v, rel=REL, abs=REL)


@pytest.mark.parametrize("option", ["I", "II"])
def test_round_one_is_unweighted_fedavg_bit_for_bit(option):
    """c = c_i = 0: the correction adds zeros; Option I's extra pass disturbs no shuffle."""
    a = Federation(make_tiny_task(), Scaffold(option=option, clients_per_round=4), rounds=2)
    b = Federation(make_tiny_task(), FedAvg(clients_per_round=4, weighted=False), rounds=2)
    a.run_round(1)
    b.run_round(1)
    assert torch.equal(a.params, b.params)
    a.run_round(2)
    b.run_round(2)
    assert not torch.equal(a.params, b.params)  # from round 2 on the corrections act


def test_updates_without_control_variates_are_rejected(caplog):
    s = Scaffold(server_lr=1.0)
    s.configure(1, [0, 1, 2, 3], np.random.default_rng(0))
    x = torch.tensor([1.0, 2.0])
    dc = {"tensors": {"scaffold_dc": torch.tensor([4.0, -8.0])}}
    updates = [
        ClientUpdate(0, torch.tensor([3.0, 4.0]), 5, extras=dc),
        ClientUpdate(1, torch.tensor([9.0, 9.0]), 5),  # e.g. a network client: no delta c
        ClientUpdate(2, torch.tensor([9.0, 9.0]), 5, extras={"tensors": {"scaffold_dc": x[:1]}}),
    ]
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        s.aggregate(1, x, iter(updates))
    assert x.tolist() == [3.0, 4.0] and s.c.tolist() == [1.0, -2.0]  # c += (1/N) sum dc
    assert "rejected the update of client 1" in caplog.text and "scaffold_dc" in caplog.text
    assert "client 2" in caplog.text and "shape (1,)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        s.aggregate(2, x, iter(updates[1:2]))
    assert x.tolist() == [3.0, 4.0] and s.c.tolist() == [1.0, -2.0]
    assert "no client update was accepted" in caplog.text
    with pytest.raises(RuntimeError, match="configure"):
        Scaffold().aggregate(1, x, iter([]))


def test_plan_carries_c_and_client_part_warns_without_it(caplog):
    s = Scaffold(option="I", clients_per_round=2)
    plan = s.configure(1, list(range(5)), np.random.default_rng(0))
    assert plan.to_wire()["algorithm"] == {"name": "scaffold", "option": "I"}
    assert plan.tensors == {} and plan.config["scaffold_c_zero"]  # size not known yet: c = 0
    s.aggregate(1, torch.zeros(3), iter([]))
    plan = s.configure(2, list(range(5)), np.random.default_rng(0))
    assert plan.tensors["scaffold_c"] is s.c and "scaffold_c_zero" not in plan.config
    # a backend that carries no plan tensors: the client trains plainly and sends no delta c
    task = make_tiny_task()
    fed = Federation(task, FedAvg(clients_per_round=2), rounds=1)
    fed.strategy.client = ControlVariates("II")
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        fed.run()
    assert "no SCAFFOLD control variate" in caplog.text


def bn_dropout_task() -> ClassificationTask:
    def model() -> nn.Module:
        return nn.Sequential(
            nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
        )

    return ClassificationTask(model, tiny_dataset(), tiny_parts(), lr=0.1, batch_size=4)


def test_option_one_pass_leaves_batchnorm_and_dropout_untouched():
    """Option I's extra pass at the global model restores the BatchNorm statistics it moved
    and draws no dropout mask from the training's RNG: round 1 is still FedAvg exactly."""
    a = Federation(bn_dropout_task(), Scaffold(option="I", clients_per_round=3), rounds=1)
    b = Federation(bn_dropout_task(), FedAvg(clients_per_round=3, weighted=False), rounds=1)
    assert torch.equal(a.run().params, b.run().params)


@pytest.mark.parametrize("option", ["I", "II"])
def test_batchnorm_statistics_get_no_control_variate(option):
    fed = Federation(bn_dropout_task(), Scaffold(option=option, clients_per_round=3), rounds=2)
    fed.run()
    stats = [fed.spec.slice(n) for n in ("1.running_mean", "1.running_var")]
    assert all(fed.params[sl].any() for sl in stats)
    for ci in [fed.strategy.c] + [st["scaffold_ci"] for st in fed.backend.states.values()]:
        assert all(not ci[sl].any() for sl in stats)
        assert ci[fed.spec.slice("0.weight")].abs().sum() > 0


@pytest.mark.parametrize("option", ["I", "II"])
def test_checkpoint_resume_is_bit_identical(option, tmp_path: Path):
    def make(rounds: int) -> Federation:
        strategy = Scaffold(server_lr=0.8, option=option, clients_per_round=3)
        return Federation(make_tiny_task(), strategy, rounds=rounds, seed=2)

    _, _, state = resumed(make, tmp_path)
    assert state["strategy"]["c"].abs().sum() > 0 and state["strategy"]["num_clients"] == 6
    assert all("scaffold_ci" in st for st in state["backend"]["clients"].values())


def test_process_pool_refuses_it_clearly():
    task = make_tiny_task()
    with ProcessPoolClients(task, seed=0, workers=1) as pool:  # round 1: no c sent yet
        fed = Federation(task, Scaffold(clients_per_round=2), backend=pool, rounds=1)
        with pytest.raises(ClientError, match=r"(?s)ProcessPoolClients does not carry.*InProc"):
            fed.run()
    strategy = Scaffold(clients_per_round=2)  # later rounds: the plan carries c
    strategy.load_state_dict({"c": torch.zeros(fed.spec.numel), "num_clients": 6})
    with ProcessPoolClients(task, seed=0, workers=1) as pool:
        fed = Federation(task, strategy, backend=pool, rounds=1)
        with pytest.raises(FedloomError, match=r"sends tensors \(scaffold_c\).*InProcessClients"):
            fed.run()


def test_vectorized_backend_falls_back_to_the_same_result():
    task = make_tiny_task()
    vec = VectorizedClients(task, seed=1)
    a = Federation(task, Scaffold(clients_per_round=3), backend=vec, rounds=2, seed=1).run()
    b = Federation(make_tiny_task(), Scaffold(clients_per_round=3), rounds=2, seed=1).run()
    assert not vec.vectorized and "client-side part" in (vec.fallback_reason or "")
    assert torch.equal(a.params, b.params)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"option": "III"}, "option must be 'I' or 'II'"),
        ({"server_lr": 0.0}, "server_lr must be a finite number > 0"),
        ({"server_lr": float("nan")}, "server_lr"),
        ({"server_lr": "1"}, "server_lr"),
        ({"clients_per_round": 0}, "clients_per_round"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scaffold(**kwargs)


def test_registry_config_and_tiny_task_run():
    assert STRATEGIES.get("scaffold") is Scaffold
    s = Scaffold()
    assert (s.server_lr, s.option, s.weighted, s.c) == (1.0, "II", False, None)
    cfg = Config.model_validate(
        {"strategy": {"name": "scaffold", "clients_per_round": 4, "options": {"option": "I"}}}
    )
    s = build_strategy(cfg)
    assert isinstance(s, Scaffold) and s.option == "I" and s.clients_per_round == 4
    with pytest.raises(ConfigError, match="option"):
        build_strategy(
            Config.model_validate({"strategy": {"name": "scaffold", "options": {"option": 2}}})
        )
    fed = Federation(make_tiny_task(), s, rounds=3, seed=0)
    initial = fed.evaluate()["test_loss"]
    result = fed.run()
    assert result.rounds == 3 and bool(torch.isfinite(result.params).all())
    assert result.history[-1]["test_loss"] < initial
    assert all(r["clients"] == 4 for r in result.history)


def test_network_clients_in_threads_match_the_simulation():
    """Control variates travel over the network (plan tensors down, delta_c up), and client
    threads of one process do not share the client part's reused buffers."""
    from fedloom.runtime import AggregatorServer, RuntimeClient

    task = make_tiny_task()
    sim_fed = Federation(task, Scaffold(fraction=1.0), rounds=2, seed=0)
    sim = sim_fed.run()
    servers: list[AggregatorServer] = []

    def make(spec):
        server = AggregatorServer(spec, address="127.0.0.1:0", poll_interval=0.02, min_clients=6)
        servers.append(server)
        return server.start()

    fed = Federation(task, Scaffold(fraction=1.0), make, rounds=2, seed=0)
    clients = [RuntimeClient(task, fed.backend.address, cid) for cid in range(6)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    try:
        for t in threads:
            t.start()
        net = fed.run()
        fed.backend.finish()
        for t in threads:
            t.join(20)
    finally:
        for s in servers:
            s.stop(grace=0.2)
    assert [r["clients"] for r in net.history] == [6, 6]
    assert torch.equal(net.params, sim.params)
    assert torch.equal(fed.strategy.c, sim_fed.strategy.c)
