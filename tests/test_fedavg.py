"""FedAvg's arithmetic against hand computations, the weighted mean, and client sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fedloom import STRATEGIES, ClientUpdate, FedAvg, WeightedMean

W = [
    [1.0, 2.0, 3.0, 4.0],
    [5.0, 6.0, 7.0, 8.0],
    [-1.0, 0.0, 1.0, 2.0],
]
N = [10, 30, 60]


def updates(ws=W, ns=N, dtype=torch.float64) -> list[ClientUpdate]:
    return [
        ClientUpdate(cid, torch.tensor(w, dtype=dtype), n, round=1)
        for cid, (w, n) in enumerate(zip(ws, ns))
    ]


def hand_mean(ws, weights) -> list[float]:
    total = sum(weights)
    return [sum(wt * w[i] for w, wt in zip(ws, weights)) / total for i in range(len(ws[0]))]


def test_weighted_mean_matches_hand_computation() -> None:
    # (10*[1,2,3,4] + 30*[5,6,7,8] + 60*[-1,0,1,2]) / 100
    expected = [(10 + 150 - 60) / 100, (20 + 180 + 0) / 100, (30 + 210 + 60) / 100, 4.0]
    assert expected == pytest.approx(hand_mean(W, N))
    g = torch.full((4,), 99.0, dtype=torch.float64)
    out = FedAvg(clients_per_round=3).aggregate(1, g, iter(updates()))
    assert out is g  # written in place
    assert torch.allclose(g, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_unweighted_mean_ignores_sample_counts() -> None:
    g = torch.zeros(4, dtype=torch.float64)
    FedAvg(clients_per_round=3, weighted=False).aggregate(1, g, iter(updates()))
    expected = [5 / 3, 8 / 3, 11 / 3, 14 / 3]
    assert torch.allclose(g, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_global_params_do_not_leak_into_the_mean() -> None:
    # Averaging replaces the global model; it is not a term of the mean.
    a = torch.zeros(4, dtype=torch.float64)
    b = torch.full((4,), -1e6, dtype=torch.float64)
    FedAvg().aggregate(1, a, iter(updates()))
    FedAvg().aggregate(1, b, iter(updates()))
    assert torch.equal(a, b)


def test_float32_mean_and_precise_accumulation() -> None:
    ws = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    ns = [1, 2, 3]
    expected = torch.tensor(hand_mean(ws, ns), dtype=torch.float32)
    for agg in (WeightedMean(), WeightedMean(precise=True)):
        g = torch.zeros(2)
        FedAvg(aggregator=agg).aggregate(1, g, iter(updates(ws, ns, torch.float32)))
        assert g.dtype == torch.float32
        assert torch.allclose(g, expected, rtol=1e-6, atol=0)


def test_streamed_buffer_may_be_reused_after_each_update() -> None:
    """Like the simulation, hand out the same buffer for every client, overwritten each time."""
    shared = torch.empty(4, dtype=torch.float64)

    def stream():
        for cid, (w, n) in enumerate(zip(W, N)):
            shared.copy_(torch.tensor(w, dtype=torch.float64))
            yield ClientUpdate(cid, shared, n)
        shared.fill_(float("nan"))  # the last buffer is reused before result() is read

    g = torch.zeros(4, dtype=torch.float64)
    FedAvg().aggregate(1, g, stream())
    assert torch.allclose(g, torch.tensor(hand_mean(W, N), dtype=torch.float64), atol=1e-12)


def test_consecutive_rounds_start_from_a_clean_accumulator() -> None:
    strategy = FedAvg()
    g = torch.zeros(4, dtype=torch.float64)
    strategy.aggregate(1, g, iter(updates()))
    strategy.aggregate(2, g, iter(updates(W[:1], [5])))
    assert torch.equal(g, torch.tensor(W[0], dtype=torch.float64))
    strategy.aggregate(3, g, iter(updates(W[1:], N[1:])))
    assert torch.allclose(g, torch.tensor(hand_mean(W[1:], N[1:]), dtype=torch.float64))


def test_no_updates_leaves_the_model_unchanged(caplog) -> None:
    g = torch.tensor([1.0, -2.0, 3.0])
    before = g.clone()
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        out = FedAvg().aggregate(7, g, iter([]))
    assert out is g and torch.equal(g, before)
    assert "round 7" in caplog.text and "no client update" in caplog.text


def test_weighted_mean_validation() -> None:
    agg = WeightedMean()
    with pytest.raises(RuntimeError, match="before reset"):
        agg.add(torch.zeros(2), 1.0)
    agg.reset(torch.zeros(2))
    with pytest.raises(ValueError, match="weight must be >= 0"):
        agg.add(torch.zeros(2), -1.0)
    with pytest.raises(RuntimeError, match="no update"):
        agg.result()
    agg.add(torch.ones(2), 0.0)
    assert agg.count == 1
    with pytest.raises(RuntimeError, match="positive weight"):
        agg.result()


def test_registered_and_state_dict_round_trip() -> None:
    assert STRATEGIES.get("fedavg") is FedAvg
    s = FedAvg(fraction=0.5)
    s.load_state_dict(s.state_dict())
    assert "fraction=0.5" in repr(s)


# -- sampling -------------------------------------------------------------------------------
def plan(strategy, available, seed: int = 0, rnd: int = 1) -> list[int]:
    return strategy.configure(rnd, available, np.random.default_rng(seed)).clients


@pytest.mark.parametrize(
    "kwargs, available, size",
    [
        ({"clients_per_round": 3}, 10, 3),
        ({"clients_per_round": 12}, 10, 10),  # never more than are available
        ({"fraction": 0.3}, 10, 3),
        ({"fraction": 0.01}, 10, 1),  # at least one client
        ({"fraction": 1.0}, 7, 7),
        ({}, 5, 5),  # default: every client
    ],
)
def test_cohort_size(kwargs, available: int, size: int) -> None:
    strategy = FedAvg(**kwargs)
    assert strategy.cohort_size(available) == size
    chosen = plan(strategy, list(range(available)))
    assert len(chosen) == size
    assert chosen == sorted(set(chosen))  # sorted, no repeats
    assert set(chosen) <= set(range(available))


def test_sampling_uses_the_available_ids() -> None:
    ids = [3, 7, 11, 20, 42]
    for seed in range(5):
        chosen = plan(FedAvg(clients_per_round=2), ids, seed)
        assert set(chosen) <= set(ids) and len(chosen) == 2
        assert all(isinstance(c, int) for c in chosen)


def test_sampling_is_deterministic_per_seed() -> None:
    s = FedAvg(clients_per_round=4)
    ids = list(range(50))
    assert plan(s, ids, seed=123) == plan(s, ids, seed=123)
    assert plan(FedAvg(fraction=0.1), ids, seed=9) == plan(FedAvg(fraction=0.1), ids, seed=9)
    draws = {tuple(plan(s, ids, seed=seed)) for seed in range(10)}
    assert len(draws) > 1  # and it does depend on the seed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clients_per_round": 3, "fraction": 0.5}, "not both"),
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"fraction": -0.2}, r"fraction must be in \(0, 1\]"),
        ({"clients_per_round": 0}, "clients_per_round must be >= 1"),
    ],
)
def test_strategy_argument_validation(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FedAvg(**kwargs)
