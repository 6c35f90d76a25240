"""Ditto against hand-worked personal models, its global model against FedAvg, resume, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask, sgd

from fedloom import FedAvg, Federation
from fedloom.algorithms import Ditto
from fedloom.algorithms.ditto import DittoPersonal
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]


def by_hand(lam: float, rounds: int, epochs: int, personal: int, lr: float = 0.1):
    """(global w, personal v_k) after ``rounds`` rounds of Ditto's Algorithm 1, every client
    taking part: w as FedAvg; v_k from w^t (first round) with the proximal term to w^t."""
    w, v = 0.5, [None] * len(DATA)
    n = [len(p) for p in DATA]
    for _ in range(rounds):
        anchor = w
        locals_ = [sgd(w, pts, lr, epochs) for pts in DATA]
        v = [
            sgd(anchor if vk is None else vk, pts, lr, personal, lambda x, a=anchor: lam * (x - a))
            for vk, pts in zip(v, DATA)
        ]
        w = sum(k * wk for k, wk in zip(n, locals_)) / sum(n)
    return w, v


@pytest.mark.parametrize("lam, personal", [(0.0, None), (0.5, None), (2.0, 2)])
@pytest.mark.parametrize("rounds", [1, 2])
def test_personal_models_match_the_paper_worked_by_hand(lam, personal, rounds):
    task = QuadraticTask(DATA, lr=0.1, w0=0.5)
    task.local_epochs = 3
    fed = Federation(task, Ditto(lam=lam, personal_epochs=personal), rounds=rounds)
    fed.run()
    w, v = by_hand(lam, rounds, 3, personal or 3)
    assert float(fed.params[0]) == pytest.approx(w, rel=REL, abs=REL)
    states = fed.backend.state_dict()["clients"]
    for cid, vk in enumerate(v):
        got = fed.strategy.client_model(cid, states[str(cid)])
        assert float(got[0]) == pytest.approx(vk, rel=REL, abs=REL)
    assert fed.strategy.client_model(7, {}) is None
    if lam == 2.0:  # the term pulls v towards w^t: v moves less than with lam = 0
        free = by_hand(0.0, rounds, 3, 2)[1]
        assert all(abs(a - 0.5) < abs(b - 0.5) for a, b in zip(v, free))


def test_global_model_is_fedavg_bit_for_bit():
    a = Federation(make_tiny_task(), Ditto(lam=1.0, clients_per_round=4), rounds=3, seed=2)
    b = Federation(make_tiny_task(), FedAvg(clients_per_round=4), rounds=3, seed=2)
    ra, rb = a.run(), b.run()
    assert torch.equal(ra.params, rb.params)
    assert [r["train_loss"] for r in ra.history] == [r["train_loss"] for r in rb.history]
    states = a.backend.state_dict()["clients"]
    assert states and all(s["ditto"].shape == ra.params.shape for s in states.values())


def test_resume_is_bit_identical(tmp_path: Path):
    def make(rounds: int) -> Federation:
        return Federation(make_tiny_task(), Ditto(lam=0.5, clients_per_round=3), rounds=rounds)

    full, second, _ = resumed(make, tmp_path)
    a, b = full.backend.state_dict()["clients"], second.backend.state_dict()["clients"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[c]["ditto"], b[c]["ditto"]) for c in a)


def test_arguments_registry_and_config():
    for bad in (-0.1, float("nan"), "1"):
        with pytest.raises(ValueError, match="lam"):
            Ditto(lam=bad)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="personal_epochs"):
            Ditto(personal_epochs=bad)
    assert Ditto().lam == 0.1 and STRATEGIES.get("ditto") is Ditto
    s = build_strategy(
        Config.model_validate(
            {"strategy": {"name": "ditto", "clients_per_round": 3, "options": {"lam": 1.0}}}
        )
    )
    assert isinstance(s, Ditto) and s.lam == 1.0 and isinstance(s.client, DittoPersonal)
    assert s.client.to_config() == {"name": "ditto", "lam": 1.0, "personal_epochs": None}
    result = Federation(make_tiny_task(), s, rounds=2, seed=0).run()
    assert result.rounds == 2 and bool(torch.isfinite(result.params).all())


def test_personal_layers_are_refused():
    task = make_tiny_task()
    task.personal_layers = ("2",)
    with pytest.raises(ValueError, match="personal_layers"):
        Federation(task, Ditto(), rounds=1)
