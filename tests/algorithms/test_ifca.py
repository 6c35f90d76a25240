"""IFCA on a two-cluster quadratic problem (hand-worked choices and averages, convergence to two
models), k = 1 is FedAvg bit for bit, initialisation, resume, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask, sgd

from fedloom import ClientUpdate, FedAvg, Federation
from fedloom.algorithms import IFCA
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

UP = [[(1.0, 2.0), (2.0, 4.0)], [(1.5, 3.0)], [(0.5, 1.0)]]  # y = 2x: optimum w = 2
DOWN = [[(1.0, -2.0)], [(2.0, -4.0), (0.5, -1.0)]]  # y = -2x: optimum w = -2
DATA = UP + DOWN


def loss(w: float, pts) -> float:
    return sum(0.5 * (w * x - y) ** 2 for x, y in pts) / len(pts)


def by_hand(models: list[float], rounds: int, lr: float = 0.1):
    """IFCA's model-averaging rounds, every client taking part, one local step each."""
    models, choice, best = list(models), {}, 0
    for _ in range(rounds):
        sums, mass = [0.0] * len(models), [0] * len(models)
        for cid, pts in enumerate(DATA):
            j = min(range(len(models)), key=lambda j, p=pts: loss(models[j], p))
            sums[j] += len(pts) * sgd(models[j], pts, lr, 1)
            mass[j] += len(pts)
            choice[cid] = j
        models = [s / m if m else w for s, m, w in zip(sums, mass, models)]
        best = max(range(len(models)), key=mass.__getitem__)
    return models, choice, models[best]


def make(rounds: int, seed: int = 0, clusters: int = 2) -> Federation:
    strategy = IFCA(clusters=clusters, init_noise=0.5)
    return Federation(QuadraticTask(DATA, lr=0.1, w0=0.1), strategy, rounds=rounds, seed=seed)


def test_initial_models_are_the_global_one_and_seeded_perturbations():
    fed = make(1)
    models = fed.strategy.models
    assert models.shape == (2, 1) and float(models[0, 0]) == pytest.approx(0.1)
    assert float(models[1, 0]) != pytest.approx(0.1)
    assert torch.equal(make(1).strategy.models, models)
    assert not torch.equal(make(1, seed=5).strategy.models, models)


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_clients_pick_the_lower_loss_cluster_and_clusters_average_by_hand(rounds):
    fed = make(rounds)
    start = fed.strategy.models[:, 0].tolist()
    fed.run()
    models, choice, best = by_hand(start, rounds)
    assert fed.strategy.models[:, 0].tolist() == pytest.approx(models, rel=REL, abs=REL)
    assert fed.strategy.assignments == choice
    assert float(fed.params[0]) == pytest.approx(best, rel=REL, abs=REL)
    assert choice[0] == choice[1] == choice[2] != choice[3] == choice[4]  # the two groups


def test_converges_to_two_distinct_models_and_clients_end_with_their_clusters():
    fed = make(40)
    fed.run()
    up, down = fed.strategy.assignments[0], fed.strategy.assignments[3]
    assert float(fed.strategy.models[up, 0]) == pytest.approx(2.0, abs=1e-3)
    assert float(fed.strategy.models[down, 0]) == pytest.approx(-2.0, abs=1e-3)
    for cid in range(5):
        own = fed.strategy.client_model(cid, {})
        assert torch.equal(own, fed.strategy.models[up if cid < 3 else down])
    assert fed.history[-1]["clients"] == 5


def test_one_cluster_is_fedavg_bit_for_bit():
    a = Federation(make_tiny_task(), IFCA(clusters=1, clients_per_round=4), rounds=3, seed=1)
    b = Federation(make_tiny_task(), FedAvg(clients_per_round=4), rounds=3, seed=1)
    assert torch.equal(a.run().params, b.run().params)


def test_aggregate_skips_updates_without_a_valid_cluster_and_keeps_unchosen_models(caplog):
    s = IFCA(clusters=3)
    s.models = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    x = torch.zeros(2)
    ups = [
        ClientUpdate(0, torch.tensor([4.0, 0.0]), 1, {"cluster": 0.0}),
        ClientUpdate(1, torch.tensor([0.0, 8.0]), 3, {"cluster": 0.0}),
        ClientUpdate(2, torch.tensor([9.0, 9.0]), 2, {"cluster": 2.0}),
        ClientUpdate(3, torch.tensor([7.0, 7.0]), 2, {"cluster": 5.0}),
        ClientUpdate(4, torch.tensor([7.0, 7.0]), 2, {}),
        ClientUpdate(5, torch.tensor([7.0, 7.0]), 2, {"cluster": float("nan")}),
    ]
    s.aggregate(1, x, iter(ups))
    assert s.models.tolist() == [[1.0, 6.0], [2.0, 2.0], [9.0, 9.0]]
    assert x.tolist() == [1.0, 6.0]  # cluster 0 had most samples
    assert s.assignments == {0: 0, 1: 0, 2: 2}
    assert caplog.text.count("no valid cluster") == 3
    s.aggregate(2, x, iter([]))
    assert x.tolist() == [1.0, 6.0]


def test_resume_is_bit_identical(tmp_path: Path):
    def fed(rounds: int) -> Federation:
        s = IFCA(clusters=3, init_noise=0.1, clients_per_round=4)
        return Federation(make_tiny_task(), s, rounds=rounds, seed=3)

    full, second, state = resumed(fed, tmp_path)
    assert state["strategy"]["assignments"]
    assert torch.equal(second.strategy.models, full.strategy.models)
    assert second.strategy.assignments == full.strategy.assignments
    with pytest.raises(ValueError, match="3 models"):
        IFCA(clusters=2).load_state_dict(state["strategy"])


def test_arguments_registry_and_config():
    for kwargs, message in [
        ({"clusters": 0}, "clusters"),
        ({"clusters": 1.5}, "clusters"),
        ({"init_noise": -1.0}, "init_noise"),
        ({"init_noise": float("inf")}, "init_noise"),
    ]:
        with pytest.raises(ValueError, match=message):
            IFCA(**kwargs)
    with pytest.raises(RuntimeError, match="prepare"):
        IFCA().configure(1, [0, 1], np.random.default_rng(0))
    assert STRATEGIES.get("ifca") is IFCA
    cfg = {"name": "ifca", "clusters": 3, "clients_per_round": 4}
    s = build_strategy(Config.model_validate({"strategy": cfg}))
    assert isinstance(s, IFCA) and s.clusters == 3
    fed = Federation(make_tiny_task(), s, rounds=2, seed=0)
    result = fed.run()
    assert set(fed.plan.tensors) == {"ifca_0", "ifca_1", "ifca_2"}
    assert fed.plan.to_wire()["algorithm"] == {"name": "ifca", "clusters": 3}
    assert result.rounds == 2 and bool(torch.isfinite(s.models).all())
    assert any(torch.equal(result.params, m) for m in s.models)
