"""FedPer: the body averaged, the head kept per client (hand-worked), personal-layer resolution,
argument checks, resume and config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask
from torch import nn

from fedloom import Federation
from fedloom.algorithms import FedPer
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]


class BodyHead(QuadraticTask):
    """Prediction h * b * x: body ``0`` (weight b), head ``1`` (weight h)."""

    def __init__(self, b0: float, h0: float):
        super().__init__(DATA, lr=0.1)
        self.b0, self.h0 = b0, h0

    def build_model(self) -> nn.Module:
        m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
        with torch.no_grad():
            m[0].weight.fill_(self.b0)
            m[1].weight.fill_(self.h0)
        return m

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"b": float(model[0].weight.detach())}


def step(b: float, h: float, pts, lr: float) -> tuple[float, float]:
    """One full-batch SGD step on mean(0.5 (h b x - y)^2), both weights at once."""
    r = [h * b * x - y for x, y in pts]
    gb = sum(h * x * ri for (x, _), ri in zip(pts, r)) / len(pts)
    gh = sum(b * x * ri for (x, _), ri in zip(pts, r)) / len(pts)
    return b - lr * gb, h - lr * gh


def by_hand(rounds: int, epochs: int, b: float = 0.5, h0: float = 1.5, lr: float = 0.1):
    heads = [h0] * len(DATA)
    n = [len(p) for p in DATA]
    for _ in range(rounds):
        bodies = []
        for k, pts in enumerate(DATA):
            bk, hk = b, heads[k]
            for _ in range(epochs):
                bk, hk = step(bk, hk, pts, lr)
            bodies.append(bk)
            heads[k] = hk
        b = sum(nk * bk for nk, bk in zip(n, bodies)) / sum(n)
    return b, heads


@pytest.mark.parametrize("rounds", [1, 3])
def test_body_is_averaged_and_heads_stay_with_their_clients(rounds):
    task = BodyHead(0.5, 1.5)
    task.local_epochs = 2
    fed = Federation(task, FedPer(), rounds=rounds)
    assert task.personal_layers == ("1",) and fed.spec.names == ["0.weight"]
    fed.run()
    b, heads = by_hand(rounds, 2)
    assert fed.params.tolist() == pytest.approx([b], rel=REL)
    states = fed.backend.state_dict()["clients"]
    got = [float(states[str(k)]["personal"]["1.weight"]) for k in range(3)]
    assert got == pytest.approx(heads, rel=REL)
    assert len({round(h, 4) for h in got}) == 3  # every client has a head of its own
    assert (
        float(fed.model[1].weight.detach()) == 1.5
    )  # the server's copy of the head is never trained


def test_last_layer_of_the_tiny_mlp_is_personal_and_unsampled_clients_keep_the_initial_head():
    task = make_tiny_task()
    fed = Federation(task, FedPer(clients_per_round=2), rounds=2, seed=1)
    assert task.personal_layers == ("2",)
    assert fed.spec.names == ["0.weight", "0.bias"]
    fed.run()
    states = fed.backend.state_dict()["clients"]
    trained = sorted(int(c) for c in states)
    assert 2 <= len(trained) <= 4
    a, b = (states[str(c)]["personal"] for c in trained[:2])
    assert not torch.equal(a["2.weight"], b["2.weight"])


@pytest.mark.parametrize(
    "layers, message",
    [([], "personal_layers"), ([""], "personal_layers"), ([3], "personal_layers")],
)
def test_invalid_arguments(layers, message):
    with pytest.raises(ValueError, match=message):
        FedPer(personal_layers=layers)


def test_layers_checked_against_the_task_and_model():
    with pytest.raises(ValueError, match="match no model tensor"):
        Federation(make_tiny_task(), FedPer(personal_layers=["fc"]), rounds=1)
    with pytest.raises(ValueError, match="no shared base"):
        Federation(make_tiny_task(), FedPer(personal_layers=["0", "2"]), rounds=1)
    with pytest.raises(ValueError, match="root module"):
        Federation(QuadraticTask(DATA), FedPer(), rounds=1)
    task = make_tiny_task()
    task.personal_layers = ("0",)
    with pytest.raises(ValueError, match="already keeps"):
        Federation(task, FedPer(personal_layers="2"), rounds=1)
    fed = Federation(task, FedPer(), rounds=1)  # None: the task's own choice stands
    assert task.personal_layers == ("0",) and fed.spec.names == ["2.weight", "2.bias"]
    Federation(task, FedPer(personal_layers=("0",)), rounds=1)  # the same: fine


def test_resume_is_bit_identical(tmp_path: Path):
    def make(rounds: int) -> Federation:
        return Federation(make_tiny_task(), FedPer(clients_per_round=3), rounds=rounds, seed=4)

    full, second, _ = resumed(make, tmp_path)
    a, b = full.backend.state_dict()["clients"], second.backend.state_dict()["clients"]
    assert a.keys() == b.keys()
    for c in a:
        assert all(torch.equal(a[c]["personal"][n], b[c]["personal"][n]) for n in a[c]["personal"])


def test_registry_and_config():
    assert STRATEGIES.get("fedper") is FedPer
    cfg = {"name": "fedper", "clients_per_round": 3, "options": {"personal_layers": ["2"]}}
    s = build_strategy(Config.model_validate({"strategy": cfg}))
    assert isinstance(s, FedPer) and s.personal_layers == ("2",)
    result = Federation(make_tiny_task(), s, rounds=2, seed=0).run()
    assert result.rounds == 2 and result.params.numel() == 8 * 6 + 6
