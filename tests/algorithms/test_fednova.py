"""FedNova against the paper's formulas worked by hand, the a_i norm against torch's own SGD,
FedNova == weighted FedAvg with equal steps, skipped updates, resume and config runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask, grad, sgd

from fedloom import FedAvg, Federation, load_config
from fedloom.algorithms.fednova import FedNova, NormalizedSteps, sgd_norm
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES
from fedloom.update import ClientUpdate

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]
STEPS = {"0": 1, "1": 4, "2": 2}  # local epochs = local steps on the quadratic task


def paper_norm(tau: int, rho: float) -> float:
    """||a_i||_1 of tau momentum-SGD steps, the paper's closed form."""
    return tau if rho == 0 else (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


def momentum_sgd(w: float, pts, lr: float, steps: int, rho: float) -> float:
    buf = 0.0
    for t in range(steps):
        g = grad(w, pts)
        buf = g if t == 0 else rho * buf + g
        w -= lr * buf
    return w


def by_hand(rounds: int, steps: list[int], rho: float = 0.0, nova: bool = True) -> float:
    w, lr, n = 0.5, 0.1, [len(p) for p in DATA]
    p = [k / sum(n) for k in n]
    for _ in range(rounds):
        ys = [momentum_sgd(w, pts, lr, s, rho) for pts, s in zip(DATA, steps)]
        if not nova:
            w = sum(pi * y for pi, y in zip(p, ys))
            continue
        a = [paper_norm(s, rho) for s in steps]
        tau_eff = sum(pi * ai for pi, ai in zip(p, a))
        w = w - tau_eff * sum(pi * (w - y) / ai for pi, y, ai in zip(p, ys, a))
    return w


class Momentum(QuadraticTask):
    momentum = 0.0

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum)


def fixed_steps(cls):
    class Fixed(cls):
        def configure(self, round, available, rng):
            plan = super().configure(round, available, rng)
            plan.client_epochs = {int(c): e for c, e in STEPS.items()}
            return plan

    return Fixed


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_fednova_with_unequal_steps_matches_the_paper_by_hand(rho):
    task = Momentum(DATA, lr=0.1, w0=0.5)
    task.momentum, steps = rho, [STEPS[str(c)] for c in range(3)]
    nova = Federation(task, fixed_steps(FedNova)(), rounds=2, seed=0)
    got = float(nova.run().params[0])
    assert got == pytest.approx(by_hand(2, steps, rho), rel=REL, abs=REL)
    avg = float(Federation(task, fixed_steps(FedAvg)(), rounds=2, seed=0).run().params[0])
    assert avg == pytest.approx(by_hand(2, steps, rho, nova=False), rel=REL, abs=REL)
    assert abs(got - avg) > 1e-3  # normalising by the steps changes the result


def test_equal_steps_and_plain_sgd_is_weighted_fedavg():
    task = QuadraticTask(DATA, lr=0.1, w0=0.5)
    task.local_epochs = 3
    got = float(Federation(task, FedNova(), rounds=2, seed=0).run().params[0])
    assert got == pytest.approx(by_hand(2, [3, 3, 3], nova=False), rel=REL, abs=REL)
    w = 0.5  # and by hand as FedAvg: the mean of three-step SGD, weighted by samples
    for _ in range(2):
        w = sum(len(p) * sgd(w, p, 0.1, 3) for p in DATA) / 6
    assert got == pytest.approx(w, rel=REL, abs=REL)
    big = dict(batch_size=32, local_epochs=2)  # every tiny client takes 2 steps
    a = Federation(make_tiny_task(**big), FedNova(fraction=1.0), rounds=2, seed=3).run()
    b = Federation(make_tiny_task(**big), FedAvg(fraction=1.0), rounds=2, seed=3).run()
    assert torch.equal(a.params, b.params)


@pytest.mark.parametrize(
    "rho, dampening, nesterov",
    [(0.0, 0, False), (0.9, 0, False), (0.5, 0.3, False), (0.7, 0, True)],
)
def test_sgd_norm_counts_what_torch_sgd_does(rho, dampening, nesterov):
    """Feed the unit gradient e_t at step t: after the steps, -p is a_i itself."""
    for tau in (1, 2, 5):
        p = torch.nn.Parameter(torch.zeros(tau, dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=1.0, momentum=rho, dampening=dampening, nesterov=nesterov)
        for t in range(tau):
            p.grad = torch.nn.functional.one_hot(torch.tensor(t), tau).double()
            opt.step()
        a = -float(p.detach().sum())
        assert sgd_norm(tau, rho, dampening, nesterov) == pytest.approx(a, rel=1e-12)
        if not dampening and not nesterov:
            assert sgd_norm(tau, rho) == pytest.approx(paper_norm(tau, rho), rel=1e-12)


def test_updates_without_the_norm_are_skipped_with_a_warning(caplog):
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    ups = [
        ClientUpdate(0, torch.tensor([0.0, 0.0], dtype=torch.float64), 1, {"fednova_norm": 2.0}),
        ClientUpdate(1, torch.tensor([9.0, 9.0], dtype=torch.float64), 5, {}),
        ClientUpdate(2, torch.tensor([9.0, 9.0], dtype=torch.float64), 5, {"fednova_norm": 0.0}),
        ClientUpdate(3, torch.tensor([0.5, 1.0], dtype=torch.float64), 3, {"fednova_norm": 1}),
    ]
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        FedNova().aggregate(7, x, iter(ups))
    assert "client 1" in caplog.text and "client 2" in caplog.text and "fednova_norm" in caplog.text
    # p = (1/4, 3/4), a = (2, 1): tau_eff 1.25; d = ((1, 2) / 2, (0.5, 1))
    expected = [1 - 1.25 * (0.25 * 0.5 + 0.75 * 0.5), 2 - 1.25 * (0.25 * 1.0 + 0.75 * 1.0)]
    assert x.tolist() == pytest.approx(expected, rel=1e-12)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        FedNova().aggregate(8, x, iter(ups[1:3]))
    assert x.tolist() == pytest.approx(expected) and "no client update" in caplog.text


def test_stragglers_partial_work_is_kept():
    task = QuadraticTask(DATA * 4, lr=0.05, w0=0.5)
    task.local_epochs = 4
    r = Federation(task, FedNova(fraction=1.0), rounds=3, seed=1, stragglers=1.0).run()
    assert [h["clients"] for h in r.history] == [12, 12, 12]


def test_registry_config_and_end_to_end():
    s = build_strategy(load_config({"strategy": {"name": "fednova", "clients_per_round": 4}}))
    assert isinstance(s, FedNova) and STRATEGIES.get("fednova") is FedNova
    assert s.clients_per_round == 4 and isinstance(s.client, NormalizedSteps)
    assert s.configure(1, list(range(6)), np.random.default_rng(0)).to_wire() == {
        "algorithm": {"name": "fednova"}
    }
    with pytest.raises(ValueError, match="clients_per_round"):
        FedNova(clients_per_round=0)
    fed = Federation(make_tiny_task(momentum=0.9), s, rounds=3, seed=0, stragglers=0.5)
    initial = fed.evaluate()["test_loss"]
    result = fed.run()
    assert bool(torch.isfinite(result.params).all())
    assert result.history[-1]["test_loss"] < initial


def test_checkpoint_resume_is_bit_identical(tmp_path: Path):
    def make(rounds: int) -> Federation:
        task = make_tiny_task(momentum=0.5)
        return Federation(task, FedNova(clients_per_round=4), rounds=rounds, seed=2, stragglers=0.5)

    resumed(make, tmp_path)
