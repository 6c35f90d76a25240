"""Elastic aggregation (OpenFed's ElasticAggregator): the clients' importance and the server's
rule against hand-worked numbers, the layout of non-trainable tensors, strategies running the
aggregator's client part, skipping updates without importance, config, resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import chain

import numpy as np
import pytest
import torch
from conftest import IN_FEATURES, NUM_CLASSES, make_tiny_task, tiny_dataset, tiny_parts
from torch import nn

from fedloom import ClassificationTask, ClientUpdate, FedAvg, Federation, RoundPlan, Task
from fedloom.aggregation import CoordinateMedian, ElasticAggregator, ElasticImportance, WeightedMean
from fedloom.algorithms import FedAvgM
from fedloom.algorithms.client import CLIENT_ALGORITHMS
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import AGGREGATORS
from fedloom.simulation import InProcessClients
from fedloom.task import ClientContext

IMP, LAYOUT = "elastic_importance", "elastic_layout"


class Line(Task):
    """y = w x, no bias: one weight; each client's data comes in the batches given."""

    def __init__(self, batches: list[list[float]], w0: float, lr: float = 0.1):
        self.batches = [torch.tensor([[x] for x in b]) for b in batches]
        self.w0, self.lr, self.local_epochs = w0, lr, 1

    def build_model(self) -> nn.Module:
        m = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            m.weight.fill_(self.w0)
        return m

    @property
    def num_clients(self) -> int:
        return 1

    def num_samples(self, client_id: int) -> int:
        return sum(len(b) for b in self.batches)

    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterator:
        for x in self.batches:
            yield x, 2 * x  # target y = 2x

    def train_step(self, model: nn.Module, batch, ctx: ClientContext) -> torch.Tensor:
        x, y = batch
        return 0.5 * ((model(x) - y) ** 2).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


def importance(task: Task, **options) -> torch.Tensor:
    engine = InProcessClients(task, seed=0)
    engine.distribute(1, RoundPlan([0]), engine.flat.detach().clone())
    plan = RoundPlan.from_wire({"algorithm": ElasticImportance(**options).to_config()}, [0])
    return engine.train_client(1, 0, plan).extras["tensors"][IMP].clone()


def test_importance_of_one_weight_is_the_mean_of_abs_2_w_x_squared():
    # one batch x = (1, 2), w = 0.5: d mean((w x)^2)/dw = mean(2 w x^2) = (1 + 4) / 2 = 2.5
    assert importance(Line([[1.0, 2.0]], 0.5), momentum=0.0).item() == pytest.approx(2.5)
    assert importance(Line([[1.0, 2.0]], -0.5), momentum=0.0).item() == pytest.approx(2.5)  # |.|
    # OpenFed's running mean from 0: (1 - 0.9) * 2.5
    assert importance(Line([[1.0, 2.0]], 0.5)).item() == pytest.approx(0.25)
    # two batches, g1 = 2.5 and g2 = 2 * 0.5 * 3^2 = 9: m (1 - m) g1 + (1 - m) g2
    two = Line([[1.0, 2.0], [3.0]], 0.5)
    assert importance(two, momentum=0.9).item() == pytest.approx(0.9 * 0.1 * 2.5 + 0.1 * 9)
    assert importance(two, momentum=0.9, max_batches=1).item() == pytest.approx(0.1 * 2.5)
    # at the end: the trained weight, one SGD step w1 = w0 - lr * mean(x (w0 x - 2 x))
    w1 = 0.5 - 0.1 * (1 * (0.5 - 2) * 1 + 2 * (1.0 - 4)) / 2
    got = importance(Line([[1.0, 2.0]], 0.5), momentum=0.0, at="end").item()
    assert got == pytest.approx(2 * w1 * 2.5)


def hand_elastic(x, ys, ns, imps, runs, q):
    """OpenFed's rule coordinate by coordinate, in Python floats."""
    n = sum(ns)
    avg = [sum(k * y[i] for y, k in zip(ys, ns)) / n for i in range(len(x))]
    om = [sum(k * m[i] for m, k in zip(imps, ns)) / n for i in range(len(x))]
    zeta = [1.0] * len(x)
    for a, b, trainable in runs:
        top = max(om[a:b])
        for i in range(a, b):
            zeta[i] = 1 + q - om[i] / (top + 1e-13) if trainable else 1.0
    return [xi + z * (ai - xi) for xi, z, ai in zip(x, zeta, avg)]


X = [1.0, 2.0, 3.0, 4.0, 5.0]
YS, NS = [[2.0, 0.0, 3.0, 6.0, 7.0], [4.0, 2.0, 1.0, 4.0, 3.0]], [1, 3]
IMPS = [[1.0, 3.0, 0.0, 2.0, 0.0], [3.0, 1.0, 2.0, 2.0, 0.0]]
# two tensors of two values (layout 1, then 2) and one buffer (0)
LAY = [1.0, 1.0, 2.0, 2.0, 0.0]


def updates(ys=YS, ns=NS, imps=IMPS, layout=LAY) -> Iterator[ClientUpdate]:
    buf, imp = torch.empty(5, dtype=torch.float64), torch.empty(5, dtype=torch.float64)
    lay = torch.tensor(layout, dtype=torch.float64)
    for cid, (y, n, m) in enumerate(zip(ys, ns, imps)):
        buf.copy_(torch.tensor(y)), imp.copy_(torch.tensor(m))  # shared, as in a simulation
        yield ClientUpdate(cid, buf, n, extras={"tensors": {IMP: imp, LAYOUT: lay}})


def test_two_clients_with_known_importances_by_hand():
    # avg = (3.5, 1.5, 1.5, 4.5, 4); Omega = (2.5, 1.5, 1.5, 2, 0)
    # zeta: first tensor max 2.5 -> (0.5, 0.9); second max 2 -> (0.75, 0.5); buffer -> 1
    expected = [1 + 0.5 * 2.5, 2 - 0.9 * 0.5, 3 - 0.75 * 1.5, 4 + 0.5 * 0.5, 5 - 1.0]
    runs = [(0, 2, True), (2, 4, True), (4, 5, False)]
    assert hand_elastic(X, YS, NS, IMPS, runs, 0.5) == pytest.approx(expected)
    x = torch.tensor(X, dtype=torch.float64)
    assert FedAvg(aggregator=ElasticAggregator()).aggregate(1, x, updates()) is x
    assert x.tolist() == pytest.approx(expected, rel=1e-12)
    for q in (0.1, 0.9):  # and a second round on the same buffers
        x = torch.tensor(X, dtype=torch.float64)
        s = FedAvg(aggregator=ElasticAggregator(quantile=q))
        s.aggregate(1, x, updates())
        s.aggregate(2, x, updates())
        once = hand_elastic(X, YS, NS, IMPS, runs, q)
        assert x.tolist() == pytest.approx(hand_elastic(once, YS, NS, IMPS, runs, q), rel=1e-12)
    # FedAvgM with no momentum and server lr 1 is the same step; unweighted uses n_i = 1
    x = torch.tensor(X, dtype=torch.float64)
    FedAvgM(server_lr=1.0, momentum=0.0, aggregator=ElasticAggregator()).aggregate(1, x, updates())
    assert x.tolist() == pytest.approx(expected, rel=1e-12)
    x = torch.tensor(X, dtype=torch.float64)
    FedAvg(weighted=False, aggregator=ElasticAggregator()).aggregate(1, x, updates())
    assert x.tolist() == pytest.approx(hand_elastic(X, YS, [1, 1], IMPS, runs, 0.5), rel=1e-12)


def test_updates_without_importance_are_skipped_with_a_warning(caplog):
    x = torch.tensor(X, dtype=torch.float64)
    plain = ClientUpdate(9, torch.full((5,), 100.0, dtype=torch.float64), 50)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        FedAvg(aggregator=ElasticAggregator()).aggregate(1, x, chain([plain], updates()))
    runs = [(0, 2, True), (2, 4, True), (4, 5, False)]
    assert x.tolist() == pytest.approx(hand_elastic(X, YS, NS, IMPS, runs, 0.5))
    assert "without importance" in caplog.text
    x = torch.tensor(X, dtype=torch.float64)  # none with importance: the model is unchanged
    FedAvg(aggregator=ElasticAggregator()).aggregate(1, x, iter([plain]))
    assert x.tolist() == X


def test_other_aggregators_take_and_ignore_extras():
    extras = {"tensors": {IMP: torch.ones(3)}}
    for agg in (WeightedMean(), CoordinateMedian()):
        agg.reset(torch.zeros(3))
        agg.add(torch.tensor([1.0, 2.0, 3.0]), 1.0, extras)
        agg.add(torch.tensor([3.0, 2.0, 1.0]), 1.0)  # the old two-argument call still works
        assert agg.result().tolist() == [2.0, 2.0, 2.0]
    assert WeightedMean.client is None and FedAvg().client is None


def bn_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(IN_FEATURES, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, NUM_CLASSES)
    )


def test_client_part_leaves_training_untouched_and_marks_buffers_for_the_plain_mean():
    task = ClassificationTask(bn_mlp, tiny_dataset(), tiny_parts(), lr=0.1, batch_size=4)
    plain, elastic = InProcessClients(task, 0), InProcessClients(task, 0)
    plan = RoundPlan([2])
    start = plain.flat.detach().clone()
    for e in (plain, elastic):
        e.distribute(1, plan, start.clone())
    a = plain.train_client(1, 2, plan).params.clone()
    part = RoundPlan.from_wire({"algorithm": ElasticImportance().to_config()}, [2])
    u = elastic.train_client(1, 2, part)
    assert torch.equal(a, u.params)  # same shuffling, same BatchNorm statistics
    imp, layout = u.extras["tensors"][IMP], u.extras["tensors"][LAYOUT]
    spec = elastic.spec
    for i, name in enumerate(spec.names):
        sl = spec.slice(name)
        if "running" in name:
            assert torch.all(layout[sl] == 0) and torch.all(imp[sl] == 0)
        else:
            assert torch.all(layout[sl] == 1 + i % 2) and torch.all(imp[sl] >= 0)
            assert imp[sl].max() > 0
    # on the server, the BatchNorm statistics are averaged plainly, the weights are not
    x = start.clone()  # the global model the round started from
    agg = ElasticAggregator()
    agg.reset(x)
    agg.add(u.params, 1.0, u.extras)
    new = agg.result()
    for name in spec.names:
        sl = spec.slice(name)
        if "running" in name:
            assert torch.allclose(new[sl], u.params[sl])
    w = spec.slice("0.weight")
    assert not torch.allclose(new[w], u.params[w])


def test_strategies_run_the_aggregators_client_part():
    rng = np.random.default_rng(0)
    for s in (
        FedAvg(aggregator=ElasticAggregator(quantile=0.3, momentum=0.5)),
        FedAvgM(server_lr=1.0, aggregator=ElasticAggregator(quantile=0.3, momentum=0.5)),
    ):
        assert isinstance(s.client, ElasticImportance)
        cfg = s.configure(1, list(range(4)), rng).to_wire()["algorithm"]
        assert cfg == {"name": "elastic", "momentum": 0.5, "at": "begin", "max_batches": None}
    assert AGGREGATORS.get("elastic") is ElasticAggregator
    assert CLIENT_ALGORITHMS.get("elastic") is ElasticImportance


@pytest.mark.parametrize(
    "bad",
    [
        dict(quantile=0),
        dict(quantile=1),
        dict(quantile="x"),
        dict(momentum=1.0),
        dict(momentum=-0.1),
        dict(at="middle"),
        dict(max_batches=0),
    ],
)
def test_arguments_are_checked(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        ElasticAggregator(**bad)


@pytest.mark.parametrize("agg", ["elastic", {"name": "elastic", "quantile": 0.3, "at": "end"}])
def test_end_to_end_from_a_config(agg):
    cfg = Config.model_validate(
        {"strategy": {"name": "fedavg", "clients_per_round": 6, "options": {"aggregator": agg}}}
    )
    strategy = build_strategy(cfg)
    assert isinstance(strategy.aggregator, ElasticAggregator)
    result = Federation(make_tiny_task(), strategy, rounds=6, seed=0).run()
    plain = Federation(make_tiny_task(), FedAvg(clients_per_round=6), rounds=6, seed=0).run()
    # it learns (from 0.23 accuracy and 1.84 test loss; FedAvg reaches 0.8 and 0.51)
    assert result.final_metrics["accuracy"] >= 0.6 and result.final_metrics["test_loss"] < 0.7
    assert not torch.equal(result.params, plain.params)


def test_resume_is_bit_identical():
    def fed() -> Federation:
        s = FedAvg(clients_per_round=4, aggregator=ElasticAggregator())
        return Federation(make_tiny_task(), s, rounds=4, seed=5)

    straight = fed().run().params
    first = fed()
    first.rounds = 2
    first.run()
    state = first.state_dict()
    second = fed()
    second.load_state_dict(state)
    assert torch.equal(second.run().params, straight)
