"""FedProx against hand-worked numbers, and the straggler setting it is known for."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_task
from quadratic import REL, QuadraticTask, sgd

from fedloom import FedAvg, Federation
from fedloom.algorithms.fedprox import FedProx, ProximalTerm
from fedloom.registry import STRATEGIES

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]


def by_hand(strategy_mu: float, rounds: int, epochs: int, lr: float = 0.1) -> float:
    w = 0.5
    for _ in range(rounds):
        anchor = w
        locals_ = [
            sgd(w, pts, lr, epochs, extra=lambda v, a=anchor: strategy_mu * (v - a)) for pts in DATA
        ]
        n = [len(p) for p in DATA]
        w = sum(k * v for k, v in zip(n, locals_)) / sum(n)
    return w


@pytest.mark.parametrize("mu", [0.0, 0.5, 2.0])
def test_fedprox_matches_the_proximal_objective_worked_by_hand(mu):
    task = QuadraticTask(DATA, lr=0.1, w0=0.5)
    task.local_epochs = 3  # three steps: the proximal term acts from the second on
    fed = Federation(task, FedProx(mu=mu, fraction=1.0), rounds=2, seed=0)
    got = float(fed.run().params[0])
    assert got == pytest.approx(by_hand(mu, 2, 3), rel=REL, abs=REL)
    if mu:  # the term pulls towards the global model: a smaller move than FedAvg's
        assert abs(got - 0.5) < abs(by_hand(0.0, 2, 3) - 0.5)


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit():
    a = Federation(make_tiny_task(), FedProx(mu=0.0, fraction=1.0), rounds=2, seed=3).run()
    b = Federation(make_tiny_task(), FedAvg(fraction=1.0), rounds=2, seed=3).run()
    assert torch.equal(a.params, b.params)


def test_fedprox_arguments_and_registry():
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="mu"):
            FedProx(mu=bad)
    s = STRATEGIES.get("fedprox")(mu=0.1, clients_per_round=2)
    assert s.mu == 0.1 and isinstance(s.client, ProximalTerm) and s.client.mu == 0.1
    plan = s.configure(1, list(range(5)), __import__("numpy").random.default_rng(0))
    assert (plan.client_algorithm, plan.client_options) == ("fedprox", {"mu": 0.1})
    assert s.state_dict() == FedProx(mu=0.1).state_dict()


def test_stragglers_fedavg_drops_them_and_fedprox_keeps_their_partial_work():
    """Every client a straggler: FedAvg keeps only those that drew the full E epochs; FedProx
    keeps them all, each trained for its own count (deterministic from the run seed)."""
    task = QuadraticTask(DATA * 4, lr=0.05, w0=0.5)
    task.local_epochs = 4
    avg = Federation(task, FedAvg(fraction=1.0), rounds=3, seed=1, stragglers=1.0)
    prox = Federation(task, FedProx(mu=0.0, fraction=1.0), rounds=3, seed=1, stragglers=1.0)
    ra, rp = avg.run(), prox.run()
    assert all(r["clients"] < 12 for r in ra.history)
    assert [r["clients"] + r["stragglers_dropped"] for r in ra.history] == [12, 12, 12]
    assert [r["clients"] for r in rp.history] == [12, 12, 12]
    again = Federation(task, FedProx(mu=0.0, fraction=1.0), rounds=3, seed=1, stragglers=1.0)
    assert torch.equal(again.run().params, rp.params)
    # the epochs each client ran are what its update reports
    plan_epochs = prox.plan.client_epochs
    assert set(plan_epochs) == set(range(12))
    assert all(1 <= e <= 4 for e in plan_epochs.values())
    with pytest.raises(ValueError, match="stragglers"):
        Federation(task, FedAvg(), rounds=1, stragglers=1.5)
