"""FedAsync and FedBuff against hand computations, and async runs over the real runtime."""

from __future__ import annotations

import threading

import pytest
import torch

import fedloom
from fedloom.algorithms import FedAsync, FedBuff, staleness_weight
from fedloom.experiment import Experiment
from fedloom.runtime import RuntimeClient
from fedloom.runtime.roles import aggregator


def upd(values, version=0, n=10):
    return fedloom.ClientUpdate(0, torch.tensor(values), n, round=version + 1, version=version)


def test_staleness_weights_follow_the_paper():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3, "polynomial", 0.5) == pytest.approx(0.5)  # (1+3)^-0.5
    assert staleness_weight(7, "constant") == 1.0
    assert staleness_weight(12, "hinge", 0.5) == pytest.approx(1 / (0.5 * 2 + 1))
    with pytest.raises(ValueError, match="staleness kind"):
        staleness_weight(1, "exp")
    with pytest.raises(ValueError, match=">= 0"):
        staleness_weight(-1)


def test_fedasync_mixes_by_alpha_times_staleness_weight():
    g = torch.tensor([1.0, 2.0])
    s = FedAsync(alpha=0.6, staleness="polynomial", a=0.5)
    s.accept(g, upd([3.0, 6.0], version=0), staleness=3, base=g.clone())
    assert s.ready() and s.pending() == 1
    s.apply(g)
    a = 0.6 * 0.5  # alpha * (1+3)^-0.5
    assert torch.allclose(g, torch.tensor([(1 - a) * 1 + a * 3, (1 - a) * 2 + a * 6]))
    assert not s.ready()


def test_fedbuff_averages_staleness_weighted_deltas_every_k():
    g = torch.tensor([1.0, 1.0])
    base0, base1 = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    s = FedBuff(buffer_size=2, server_lr=0.5)
    s.accept(g, upd([2.0, 3.0]), staleness=0, base=base0)  # delta (1, 2), weight 1
    assert not s.ready()
    s.accept(g, upd([4.0, 2.0]), staleness=3, base=base1)  # delta (4, 0), weight 0.5
    assert s.ready()
    s.apply(g)
    expected = torch.tensor([1.0, 1.0]) + 0.5 / 2 * torch.tensor([1 + 0.5 * 4, 2 + 0.0])
    assert torch.allclose(g, expected)
    state = s.state_dict()
    t = FedBuff(buffer_size=2)
    t.load_state_dict(state)
    assert t.pending() == 0


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
        "model.name='logreg'",
        "train.local_epochs=1",
        f"strategy.name='{name}'",
        f"strategy.options={options}",
        "runtime.min_clients=3",
        *extra,
    ]
    exp = Experiment.from_config(None, overrides, backend=aggregator("127.0.0.1:0"))
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
    return result, clients


@pytest.mark.parametrize("name,options", [("fedbuff", "{ buffer_size = 2 }"), ("fedasync", "{}")])
def test_async_run_over_the_runtime(tmp_path, name, options):
    result, clients = run_async(tmp_path, name, options)
    assert result.rounds == 4
    hist = result.history
    assert [r["version"] for r in hist] == [1, 2, 3, 4]
    per_version = 2 if name == "fedbuff" else 1
    assert all(r["clients"] == per_version for r in hist)
    assert all(r["staleness_max"] >= 0 for r in hist) and "staleness_mean" in hist[-1]
    assert sum(c.rounds_done for c in clients) >= 4 * per_version
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0


def test_time_trigger_makes_versions_before_the_buffer_fills(tmp_path):
    result, _ = run_async(
        tmp_path, "fedbuff", "{ buffer_size = 1000 }", ["strategy.every_seconds=0.5"]
    )
    assert result.rounds == 4
    assert all(1 <= r["clients"] < 1000 for r in result.history)
