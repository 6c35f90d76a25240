"""FedAsync and FedBuff against hand computations, and async runs over the real runtime."""

from __future__ import annotations

import copy
import itertools
import threading

import pytest
import torch

import fedloom
from fedloom.algorithms import FedAsync, FedBuff, staleness_weight
from fedloom.deploy.roles import aggregator
from fedloom.experiment import Experiment
from fedloom.runtime import RuntimeClient


def upd(values, version=0, n=10):
    return fedloom.ClientUpdate(0, torch.tensor(values), n, round=version + 1, version=version)


def test_staleness_weights_follow_the_paper():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3, "polynomial", 0.5) == 0.5  # (1+3)^-0.5
    assert staleness_weight(8, "polynomial", 1.0) == pytest.approx(1 / 9)
    assert staleness_weight(7, "constant") == 1.0
    assert staleness_weight(10, "hinge", 0.5) == 1.0  # no discount up to b = 10
    assert staleness_weight(12, "hinge", 0.5) == 0.5  # 1 / (0.5 (12 - 10) + 1)
    with pytest.raises(ValueError, match="staleness kind"):
        staleness_weight(1, "exp")
    with pytest.raises(ValueError, match=">= 0"):
        staleness_weight(-1)


def test_fedasync_mixes_by_alpha_times_staleness_weight():
    g = torch.tensor([1.0, 2.0])
    s = FedAsync(alpha=0.6, staleness="polynomial", a=0.5)
    s.accept(g, upd([3.0, 6.0], version=0), staleness=3, base=g.clone())
    assert s.ready() and s.pending() == 1
    assert torch.equal(g, torch.tensor([1.0, 2.0]))  # accepted, not yet applied
    s.apply(g)
    # mixing weight 0.6 * (1+3)^-0.5 = 0.3: 0.7 * (1, 2) + 0.3 * (3, 6)
    assert torch.allclose(g, torch.tensor([1.6, 3.2]))
    assert not s.ready() and s.pending() == 0


def test_fedbuff_averages_staleness_weighted_deltas_every_k():
    g = torch.tensor([1.0, 1.0])
    base0, base1 = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    s = FedBuff(buffer_size=2, server_lr=0.5)
    s.accept(g, upd([2.0, 3.0]), staleness=0, base=base0)  # delta (1, 2), weight 1
    assert not s.ready() and s.pending() == 1
    # the half-full buffer survives a checkpoint: a fresh FedBuff goes on from its state
    t = FedBuff(buffer_size=2, server_lr=0.5)
    t.load_state_dict(copy.deepcopy(s.state_dict()))
    assert t.pending() == 1
    for b in (s, t):
        b.accept(g, upd([4.0, 2.0]), staleness=3, base=base1)  # delta (4, 0), weight 0.5
        assert b.ready()
    h = g.clone()
    s.apply(g)
    t.apply(h)
    # (1, 1) + 0.5 / 2 * ((1, 2) + 0.5 * (4, 0)) = (1, 1) + 0.25 * (3, 2)
    assert torch.allclose(g, torch.tensor([1.75, 1.5]))
    assert torch.equal(h, g)
    assert not s.ready() and s.pending() == 0
    # the next buffer starts empty: one update, staleness 0, delta (1, 1) from (1.75, 1.5)
    s.accept(g, upd([2.75, 2.5]), staleness=0, base=g.clone())
    s.accept(g, upd([1.75, 1.5]), staleness=0, base=g.clone())  # delta 0
    s.apply(g)
    assert torch.allclose(g, torch.tensor([2.0, 1.75]))  # + 0.5 / 2 * (1, 1)


def test_async_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match="alpha"):
        FedAsync(alpha=0)
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuff(buffer_size=0)
    with pytest.raises(ValueError, match="server_lr"):
        FedBuff(server_lr=-1)


def test_async_strategy_refuses_simulation(tmp_path):
    with pytest.raises(fedloom.ConfigError, match="asynchronous"):
        Experiment.from_config(None, [f"output.dir='{tmp_path}'", "strategy.name='fedasync'"])


def run_async(tmp_path, name, options, extra=()):
    overrides = [
        f"output.dir='{tmp_path}'",
        "output.progress=false",
        "rounds=4",
        "data.num_clients=3",
        "data.partition='iid'",  # any one client's model is a fair model: versions improve
        "model.name='logreg'",
        "train.local_epochs=1",
        f"strategy.name='{name}'",
        f"strategy.options={options}",
        "runtime.min_clients=3",
        *extra,
    ]
    exp = Experiment.from_config(None, overrides, backend=aggregator("127.0.0.1:0"))
    before = exp.task.evaluate(exp.federation.model)
    server = exp.federation.backend
    clients = [RuntimeClient(exp.task, server.address, i, retry_for=20) for i in range(3)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    try:
        result = exp.run()
    finally:
        server.finish()
        for t in threads:
            t.join(timeout=30)
        server.stop()
    return result, clients, exp, before


@pytest.mark.parametrize("name,options", [("fedbuff", "{ buffer_size = 2 }"), ("fedasync", "{}")])
def test_async_run_over_the_runtime(tmp_path, name, options):
    result, clients, exp, before = run_async(tmp_path, name, options)
    assert result.rounds == 4
    hist = result.history
    assert [r["version"] for r in hist] == [1, 2, 3, 4]
    per_version = 2 if name == "fedbuff" else 1
    assert [r["clients"] for r in hist] == [per_version] * 4
    # version 1 can only hear from clients that trained the initial model (version 0), and no
    # update to version v can be older than version 0: staleness in [0, v - 1]
    assert hist[0]["staleness_max"] == hist[0]["staleness_mean"] == 0
    for r in hist:
        assert 0 <= r["staleness_mean"] <= r["staleness_max"] <= r["version"] - 1
    # each version's samples are those of the clients whose updates made it
    sizes = [exp.task.num_samples(i) for i in range(3)]
    sums = {sum(c) for c in itertools.combinations_with_replacement(sizes, per_version)}
    assert all(r["samples"] in sums for r in hist)
    assert sum(c.rounds_done for c in clients) >= 4 * per_version
    # and the four versions learned: lower test loss, accuracy far above 10 balanced classes
    assert result.final_metrics["test_loss"] < before["test_loss"]
    assert result.final_metrics["accuracy"] > 0.5 > before["accuracy"]


def test_time_trigger_makes_versions_before_the_buffer_fills(tmp_path):
    result, *_ = run_async(
        tmp_path, "fedbuff", "{ buffer_size = 1000 }", ["strategy.every_seconds=0.5"]
    )
    assert result.rounds == 4
    for r in result.history:
        assert 1 <= r["clients"] < 1000
        assert r["seconds"] >= 0.5  # the trigger waits its 0.5 s before making a version
