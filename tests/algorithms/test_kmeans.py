"""Clustered FL by k-means: the clustering itself, two obviously different client groups
separated and averaged as worked by hand, resume, arguments and config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed
from quadratic import REL, QuadraticTask, sgd

from fedloom import FedAvg, Federation
from fedloom.algorithms import KMeansClustered
from fedloom.algorithms.kmeans import kmeans, match
from fedloom.config import Config
from fedloom.experiment import build_strategy
from fedloom.registry import STRATEGIES

# every point x = 1: a client's update depends only on its group, so the groups are obvious
UP = [[(1.0, 2.0), (1.0, 2.0)], [(1.0, 2.0)], [(1.0, 2.0)]]  # optimum w = 2, 4 samples
DOWN = [[(1.0, -2.0)], [(1.0, -2.0), (1.0, -2.0)]]  # optimum w = -2, 3 samples
DATA = UP + DOWN


def test_kmeans_finds_two_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=g) * 0.1 + 5
    b = torch.randn(4, 3, generator=g) * 0.1 - 5
    x = torch.cat([a, b])[torch.tensor([0, 6, 1, 7, 2, 8, 3, 9, 4, 5])]
    labels = kmeans(x, 2, np.random.default_rng(1))
    assert labels == kmeans(x, 2, np.random.default_rng(1))
    first = {labels[i] for i in (0, 2, 4, 6, 8, 9)}
    second = {labels[i] for i in (1, 3, 5, 7)}
    assert len(first) == len(second) == 1 and first != second
    assert kmeans(x[:1], 3, np.random.default_rng(0)) == [0]  # fewer points than clusters
    assert kmeans(torch.zeros(4, 2), 2, np.random.default_rng(0)) == [0, 0, 0, 0]


def test_match_keeps_slots_by_weight_and_fills_free_ones():
    # round one: everyone came from slot 0; the heavier group keeps it
    assert match([0, 0, 1], [0, 0, 0], [1.0, 1.0, 3.0], 2) == {1: 0, 0: 1}
    # groups follow where their members came from, whatever k-means called them
    assert match([1, 1, 0, 0], [0, 0, 1, 1], [1.0] * 4, 3) == {1: 0, 0: 1}
    assert match([0, 1, 2], [2, 2, 2], [1.0, 2.0, 3.0], 3) == {2: 2, 0: 0, 1: 1}


def by_hand(rounds: int, w0: float = 0.1, lr: float = 0.1) -> list[float]:
    """The up group (4 samples) keeps slot 0 in round one, the down group takes slot 1; each
    slot is the sample-weighted average of its group's one-step local models."""
    up, down = w0, w0
    for _ in range(rounds):
        new_up = sum(len(p) * sgd(up, p, lr, 1) for p in UP) / 4
        down = sum(len(p) * sgd(down, p, lr, 1) for p in DOWN) / 3
        up = new_up
    return [up, down]


def make(rounds: int, **kw) -> Federation:
    strategy = KMeansClustered(clusters=2, **kw)
    return Federation(QuadraticTask(DATA, lr=0.1, w0=0.1), strategy, rounds=rounds, seed=0)


@pytest.mark.parametrize("cluster_on", ["updates", "models"])
@pytest.mark.parametrize("rounds", [1, 2, 30])
def test_two_obvious_groups_are_separated_and_averaged_by_hand(rounds, cluster_on):
    fed = make(rounds, cluster_on=cluster_on)
    fed.run()
    s = fed.strategy
    assert s.assignments == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1}
    assert s.models[:, 0].tolist() == pytest.approx(by_hand(rounds), rel=REL, abs=REL)
    assert torch.equal(fed.params, s.models[0])  # the slot with most samples
    assert fed.plan.config["km_assignment"] == {
        str(c): (0 if rounds == 1 else s.assignments[c]) for c in range(5)
    }
    assert torch.equal(s.client_model(4, {}), s.models[1])
    assert torch.equal(s.client_model(9, {}), s.models[0])  # never seen: cluster 0
    if rounds == 30:
        assert s.models[:, 0].tolist() == pytest.approx([2.0, -2.0], abs=0.1)


def test_one_cluster_is_fedavg_up_to_rounding():
    a = Federation(make_tiny_task(), KMeansClustered(1, clients_per_round=4), rounds=3, seed=1)
    b = Federation(make_tiny_task(), FedAvg(clients_per_round=4), rounds=3, seed=1)
    # float32 means of 4 models in another order: 4 eps32 x |w| <= 3 = 7e-7 a round, carried
    # through 3 rounds of SGD (lr 0.1, |x| <= 8, <= 6 steps): x 10 -> 1e-5
    torch.testing.assert_close(a.run().params, b.run().params, rtol=0, atol=1e-5)


def test_resume_is_bit_identical(tmp_path: Path):
    def fed(rounds: int) -> Federation:
        s = KMeansClustered(clusters=3, clients_per_round=4)
        return Federation(make_tiny_task(), s, rounds=rounds, seed=2)

    full, second, state = resumed(fed, tmp_path)
    assert state["strategy"]["assignments"]
    assert torch.equal(second.strategy.models, full.strategy.models)
    assert second.strategy.assignments == full.strategy.assignments
    assert len(set(full.strategy.assignments.values())) > 1
    with pytest.raises(ValueError, match="3 models"):
        KMeansClustered(clusters=2).load_state_dict(state["strategy"])


def test_arguments_registry_and_config():
    for kwargs, message in [
        ({"clusters": 0}, "clusters"),
        ({"iterations": 0}, "iterations"),
        ({"cluster_on": "params"}, "cluster_on"),
    ]:
        with pytest.raises(ValueError, match=message):
            KMeansClustered(**kwargs)
    with pytest.raises(RuntimeError, match="prepare"):
        KMeansClustered().configure(1, [0, 1], np.random.default_rng(0))
    assert STRATEGIES.get("clustered") is STRATEGIES.get("kmeans") is KMeansClustered
    cfg = {"name": "kmeans", "clusters": 3, "clients_per_round": 5}
    s = build_strategy(Config.model_validate({"strategy": cfg}))
    assert isinstance(s, KMeansClustered) and s.clusters == 3
    fed = Federation(make_tiny_task(), s, rounds=2, seed=0)
    fed.run_round(1)
    buf = s._buf  # private: the reused (cohort x parameters) buffer; no result shows reuse
    assert buf is not None and buf.shape == (5, fed.spec.numel)
    fed.run_round(2)
    assert s._buf is buf
    assert set(fed.plan.tensors) == {"km_0", "km_1", "km_2"}
    assert fed.plan.to_wire()["algorithm"] == {"name": "kmeans"}
    assert bool(torch.isfinite(s.models).all())
