"""FedDyn against Algorithm 1 worked by hand, the server update on vectors, empty rounds,
checkpoint resume, the backends (process pool and vectorised fallback give the in-process
result), the registry and config, and a short run on the tiny task."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask, sgd

from fedloom import (
    ClientUpdate,
    ConfigError,
    Federation,
    ProcessPoolClients,
    VectorizedClients,
)
from fedloom.algorithms.feddyn import DynamicRegularizer, FedDyn
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]
LR, K, W0 = 0.1, 3, 0.5


def by_hand(cohorts, alpha):
    """Algorithm 1 with Python floats: (theta, h, [grad_prev_k]) after the given cohorts."""
    m = len(DATA)
    x, h, prev = W0, 0.0, [0.0] * m
    for cohort in cohorts:
        thetas = []
        for k in cohort:
            # gradient of L_k(theta) - <prev_k, theta> + alpha/2 (theta - x)^2
            theta = sgd(x, DATA[k], LR, K, extra=lambda w, a=x, g=prev[k]: -g + alpha * (w - a))
            prev[k] -= alpha * (theta - x)
            thetas.append(theta)
        h -= alpha * sum(t - x for t in thetas) / m
        x = sum(thetas) / len(thetas) - h / alpha
    return x, h, prev


@pytest.mark.parametrize("alpha, per_round", [(0.5, 2), (0.5, 3), (0.01, 2), (2.0, 3)])
def test_two_rounds_match_algorithm_1_worked_by_hand(alpha, per_round):
    task = QuadraticTask(DATA, lr=LR, w0=W0)
    task.local_epochs = K  # one full-batch step per epoch: K local steps
    s = FedDyn(alpha=alpha, clients_per_round=per_round)
    fed = Federation(task, s, rounds=2, seed=4)
    cohorts = []
    for r in (1, 2):
        fed.run_round(r)
        cohorts.append(list(fed.plan.clients))
    assert set(cohorts[0]) & set(cohorts[1])  # some client trains with grad_prev != 0
    x, h, prev = by_hand(cohorts, alpha)
    assert float(fed.params[0]) == pytest.approx(x, rel=REL, abs=REL)
    assert float(s.h[0]) == pytest.approx(h, rel=REL, abs=REL)
    states = fed.backend.states
    assert sorted(states) == sorted(set(cohorts[0]) | set(cohorts[1]))  # one per client
    for k, v in enumerate(prev):
        got = float(states[k]["feddyn_grad"][0]) if k in states else 0.0
        assert got == pytest.approx(v, rel=REL, abs=REL)


def test_server_update_on_vectors_and_empty_rounds(caplog):
    s = FedDyn(alpha=0.5)
    s.configure(1, [0, 1, 2, 3], np.random.default_rng(0))  # m = 4
    x = torch.tensor([1.0, 2.0])
    updates = [
        ClientUpdate(0, torch.tensor([3.0, 4.0]), 7),
        ClientUpdate(1, torch.tensor([5.0, 0.0]), 1),
    ]
    assert s.aggregate(1, x, iter(updates)) is x
    # sum (theta_k - x) = [6, 0]; h = -0.5 * 6 / 4 = [-0.75, 0]; x = [4, 2] - h / 0.5
    assert s.h.tolist() == [-0.75, 0.0] and x.tolist() == [5.5, 2.0]
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        s.aggregate(2, x, iter([]))
    assert x.tolist() == [5.5, 2.0] and s.h.tolist() == [-0.75, 0.0]
    assert "round 2" in caplog.text and "no client update was accepted" in caplog.text
    fresh = FedDyn()
    fresh.configure(1, [0], np.random.default_rng(0))
    fresh.aggregate(1, x, iter([]))
    assert fresh.h is None and fresh.state_dict() == {"num_clients": 1}
    with pytest.raises(RuntimeError, match="configure"):
        FedDyn().aggregate(1, x, iter([]))


def test_checkpoint_resume_is_bit_identical(tmp_path: Path):
    def make(rounds: int) -> Federation:
        return Federation(
            make_tiny_task(), FedDyn(alpha=0.1, clients_per_round=3), rounds=rounds, seed=2
        )

    _, _, state = resumed(make, tmp_path)
    assert state["strategy"]["h"].abs().sum() > 0 and state["strategy"]["num_clients"] == 6
    assert all("feddyn_grad" in st for st in state["backend"]["clients"].values())


def test_process_pool_and_vectorized_backends_give_the_in_process_result():
    """No tensor travels with the plan: the pool keeps grad_prev in the client's worker."""
    task = make_tiny_task()
    expected = Federation(task, FedDyn(alpha=0.1, clients_per_round=4), rounds=3, seed=1).run()
    with ProcessPoolClients(task, seed=1, workers=2) as pool:
        got = Federation(
            task, FedDyn(alpha=0.1, clients_per_round=4), backend=pool, rounds=3, seed=1
        ).run()
        assert torch.equal(got.params, expected.params)
    vec = VectorizedClients(task, seed=1)
    got = Federation(
        task, FedDyn(alpha=0.1, clients_per_round=4), backend=vec, rounds=3, seed=1
    ).run()
    assert not vec.vectorized and "client-side part" in (vec.fallback_reason or "")
    assert torch.equal(got.params, expected.params)


@pytest.mark.parametrize("alpha", [0.0, -0.1, float("nan"), float("inf"), "0.1"])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        FedDyn(alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        DynamicRegularizer(alpha)


def test_registry_config_and_tiny_task_run():
    assert STRATEGIES.get("feddyn") is FedDyn
    s = FedDyn()
    assert (
        s.alpha == 0.01
        and s.h is None
        and s.client.to_config() == {"name": "feddyn", "alpha": 0.01}
    )
    plan = s.configure(1, list(range(5)), np.random.default_rng(0))
    assert plan.to_wire()["algorithm"] == {"name": "feddyn", "alpha": 0.01} and plan.tensors == {}
    cfg = Config.model_validate(
        {"strategy": {"name": "feddyn", "clients_per_round": 4, "options": {"alpha": 0.1}}}
    )
    s = build_strategy(cfg)
    assert isinstance(s, FedDyn) and s.alpha == 0.1 and s.clients_per_round == 4
    with pytest.raises(ConfigError, match="alpha"):
        build_strategy(
            Config.model_validate({"strategy": {"name": "feddyn", "options": {"alpha": 0}}})
        )
    fed = Federation(make_tiny_task(), s, rounds=3, seed=0)
    initial = fed.evaluate()["test_loss"]
    result = fed.run()
    assert result.rounds == 3 and bool(torch.isfinite(result.params).all())
    assert result.history[-1]["test_loss"] < initial
