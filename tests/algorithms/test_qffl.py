"""q-FedAvg against Algorithm 2 of the paper worked by hand, q = 0 == unweighted FedAvg bit for
bit (the loss pass leaves training untouched), the reported loss, skipped updates, fairness on
a task whose clients disagree, resume and config runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_task, resumed, tiny_dataset, tiny_mlp, tiny_parts
from quadratic import REL, QuadraticTask, sgd
from torch import nn

from fedloom import (
    Callback,
    ClassificationTask,
    FedAvg,
    Federation,
    TensorDataset,
    load_config,
)
from fedloom.algorithms.qffl import QFFL, GlobalLoss
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES
from fedloom.update import ClientUpdate

DATA = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]


def loss(w: float, pts) -> float:
    return sum(0.5 * (w * x - y) ** 2 for x, y in pts) / len(pts)


def by_hand(q: float, rounds: int, epochs: int, lr: float = 0.1, server_lr=None) -> float:
    """Algorithm 2: L = 1/lr, Delta_k = F_k^q L (w - w_k), h_k = q F_k^(q-1) |dw_k|^2 + L F_k^q."""
    w, big_l = 0.5, 1.0 / (server_lr or lr)
    for _ in range(rounds):
        deltas, hs = [], []
        for pts in DATA:
            f = loss(w, pts) + 1e-10
            dw = big_l * (w - sgd(w, pts, lr, epochs))
            deltas.append(f**q * dw)
            hs.append(q * f ** (q - 1) * dw * dw + big_l * f**q)
        w -= sum(deltas) / sum(hs)
    return w


@pytest.mark.parametrize("q, server_lr", [(0.5, None), (1.0, None), (2.0, None), (1.0, 0.05)])
def test_qffl_matches_algorithm_2_by_hand(q, server_lr):
    task = QuadraticTask(DATA, lr=0.1, w0=0.5)
    task.local_epochs = 2
    got = float(Federation(task, QFFL(q=q, lr=server_lr), rounds=2, seed=0).run().params[0])
    assert got == pytest.approx(by_hand(q, 2, 2, server_lr=server_lr), rel=REL, abs=REL)
    assert abs(got - by_hand(0.0, 2, 2)) > 1e-3  # the losses reweight the clients


def test_q_zero_is_the_unweighted_mean_by_hand():
    task = QuadraticTask(DATA, lr=0.1, w0=0.5)
    task.local_epochs = 2
    w = 0.5
    for _ in range(2):
        w = sum(sgd(w, p, 0.1, 2) for p in DATA) / 3
    got = float(Federation(task, QFFL(q=0), rounds=2, seed=0).run().params[0])
    assert got == pytest.approx(w, rel=REL) == pytest.approx(by_hand(0.0, 2, 2), rel=1e-12)


def dropout_bn_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
    )


@pytest.mark.parametrize("model_fn", [tiny_mlp, dropout_bn_mlp], ids=["mlp", "dropout_bn"])
def test_q_zero_is_unweighted_fedavg_bit_for_bit(model_fn):
    """Also shows the loss pass changes nothing in training: not the shuffle, not dropout's
    random draws, not BatchNorm's running statistics."""

    def run(strategy):
        task = ClassificationTask(model_fn, tiny_dataset(), tiny_parts(), lr=0.1, batch_size=4)
        return Federation(task, strategy, rounds=3, seed=4).run()

    a = run(QFFL(q=0.0, clients_per_round=4))
    b = run(FedAvg(clients_per_round=4, weighted=False))
    assert torch.equal(a.params, b.params)


class Record(Callback):
    def __init__(self) -> None:
        self.metrics: dict[int, dict] = {}

    def on_update(self, fed, update, error) -> None:
        if update.round == 1:
            self.metrics[update.client_id] = dict(update.metrics)


def test_reported_loss_is_the_clients_mean_training_loss_at_the_global_model():
    task, rec = make_tiny_task(lr=0.05), Record()
    fed = Federation(task, QFFL(fraction=1.0), rounds=1, seed=0, callbacks=[rec])
    with torch.no_grad():
        expected = [
            float(F.cross_entropy(fed.model(task.dataset.train_x[p]), task.dataset.train_y[p]))
            for p in task.parts
        ]
    fed.run()
    # float32 cross-entropy means of <= 24 samples, batched otherwise: <= 24 terms x ~5 ops
    # (log-softmax) x eps32 (6e-8) = 7e-6 relative
    got = [rec.metrics[c]["qffl_loss"] for c in range(6)]
    assert got == pytest.approx(expected, rel=1e-5)
    assert all(rec.metrics[c]["qffl_lr"] == 0.05 for c in range(6))


def test_updates_without_a_valid_loss_are_skipped_with_a_warning(caplog):
    x = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def up(cid, w, metrics):
        return ClientUpdate(cid, torch.tensor(w, dtype=torch.float64), 1, metrics)

    ups = [
        up(0, [0.0, 0.0], {"qffl_loss": 2.0, "qffl_lr": 0.5}),
        up(1, [9.0, 9.0], {"qffl_lr": 0.5}),
        up(2, [9.0, 9.0], {"qffl_loss": -1.0, "qffl_lr": 0.5}),
        up(3, [9.0, 9.0], {"qffl_loss": 1.0}),
        up(4, [1.0, 0.0], {"qffl_loss": 1.0, "qffl_lr": 0.25}),
    ]
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        QFFL(q=1.0).aggregate(3, x, iter(ups))
    assert all(f"client {c}" in caplog.text for c in (1, 2, 3)) and "client 0" not in caplog.text
    # q = 1: client 0 L 2, dw (2, -2), |dw|^2 8, h 8 + 4; client 4 L 4, dw (0, -4), h 16 + 4
    f0, f4 = 2.0 + 1e-10, 1.0 + 1e-10
    h = (8 + 2 * f0) + (16 + 4 * f4)
    expected = [1 - (f0 * 2) / h, -1 - (f0 * -2 + f4 * -4) / h]
    assert x.tolist() == pytest.approx(expected, rel=1e-12)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        QFFL(q=1.0, lr=0.5).aggregate(4, x, iter(ups[1:3]))
    assert x.tolist() == pytest.approx(expected) and "no client update" in caplog.text


def test_large_q_and_a_zero_loss_first_do_not_overflow_float32():
    """Weights L F_k^q relative to the first client would be 1e100 here: kept relative to the
    largest instead. Expected from the formulas in Python floats."""
    x = torch.tensor([1.0, -1.0])
    ys, losses = [[0.0, 0.0], [3.0, 1.0], [2.0, 0.0]], [0.0, 1.0, 2.0]
    ups = [
        ClientUpdate(c, torch.tensor(y), 1, {"qffl_loss": f, "qffl_lr": 0.5})
        for c, (y, f) in enumerate(zip(ys, losses))
    ]
    QFFL(q=10.0).aggregate(1, x, iter(ups))
    q, big_l = 10.0, 2.0
    deltas, hs = [[0.0, 0.0]], []
    for y, f in zip(ys, losses):
        dw = [big_l * (a - b) for a, b in zip([1.0, -1.0], y)]
        f += 1e-10
        deltas.append([f**q * v for v in dw])
        hs.append(q * f ** (q - 1) * sum(v * v for v in dw) + big_l * f**q)
    expected = [w - sum(d[i] for d in deltas) / sum(hs) for i, w in enumerate([1.0, -1.0])]
    # float32 on purpose: f**10 carries 10 eps32 (6e-7) relative, the 3-term sums 3 eps32 more
    assert bool(torch.isfinite(x).all()) and x.tolist() == pytest.approx(expected, rel=1e-6)


def conflicting_task(seed: int) -> ClassificationTask:
    """The tiny task with the biggest client's labels rotated: no model suits everyone."""
    ds, parts = tiny_dataset(seed), tiny_parts()
    y = ds.train_y.clone()
    y[parts[4]] = (y[parts[4]] + 1) % 3
    ds = TensorDataset("tiny_conflict", ds.train_x, y, ds.test_x, ds.test_y, 3)
    return ClassificationTask(tiny_mlp, ds, parts, lr=0.1, batch_size=4)


@pytest.mark.parametrize("seed", [0, 3])
def test_larger_q_spreads_the_clients_losses_less(seed):
    """Seen over 8 seeds and 8 to 60 rounds: q = 5 cuts the variance of the clients' training
    losses 10-40x and lowers the worst one (at a higher mean loss, the paper's trade-off)."""
    out = []
    for q in (0.0, 5.0):
        task = conflicting_task(seed)
        fed = Federation(task, QFFL(q=q, fraction=1.0), rounds=8, seed=seed)
        fed.run()
        with torch.no_grad():
            out.append(
                torch.tensor(
                    [
                        F.cross_entropy(fed.model(task.dataset.train_x[p]), task.dataset.train_y[p])
                        for p in task.parts
                    ]
                )
            )
    assert out[1].var() < out[0].var() and out[1].max() < out[0].max()


def test_arguments_registry_and_config():
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="q must"):
            QFFL(q=bad)
    for bad in (0.0, -0.1, float("inf")):
        with pytest.raises(ValueError, match="lr must"):
            QFFL(lr=bad)
    assert (QFFL().q, QFFL().lr) == (1.0, None) and STRATEGIES.get("qffl") is QFFL
    s = build_strategy(load_config({"strategy": {"name": "qffl", "options": {"q": 2, "lr": 0.1}}}))
    assert isinstance(s, QFFL) and (s.q, s.lr) == (2.0, 0.1) and isinstance(s.client, GlobalLoss)
    plan = s.configure(1, list(range(6)), np.random.default_rng(0))
    assert plan.to_wire() == {"algorithm": {"name": "qffl"}}
    fed = Federation(make_tiny_task(), s, rounds=3, seed=0)
    initial = fed.evaluate()["test_loss"]
    result = fed.run()
    assert bool(torch.isfinite(result.params).all())
    assert result.history[-1]["test_loss"] < initial


def test_checkpoint_resume_is_bit_identical(tmp_path: Path):
    def make(rounds: int) -> Federation:
        strategy = QFFL(q=2.0, clients_per_round=4)
        return Federation(make_tiny_task(), strategy, rounds=rounds, seed=2, stragglers=0.5)

    resumed(make, tmp_path)
