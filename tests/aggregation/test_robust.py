"""Robust aggregators: hand-worked answers, buffer reuse, outliers, errors, registry, FedAvg."""

from __future__ import annotations

import pytest
import torch

import fedloom
from fedloom.aggregation import Aggregator, CoordinateMedian, Krum, MultiKrum, TrimmedMean
from fedloom.config import Config
from fedloom.errors import ConfigError
from fedloom.experiment import build_strategy
from fedloom.registry import AGGREGATORS
from fedloom.update import ClientUpdate


def aggregate(agg: Aggregator, rows: list[list[float]], weights: list[float] | None = None):
    """Feed ``rows`` through one shared buffer, as the simulation does, and return the result."""
    buf = torch.empty(len(rows[0]))
    agg.reset(buf)
    for i, row in enumerate(rows):
        buf.copy_(torch.tensor(row))
        agg.add(buf, 1.0 if weights is None else weights[i])
    return agg.result()


ROBUST = {
    "median": CoordinateMedian,
    "trimmed_mean": lambda: TrimmedMean(beta=0.2),
    "krum": lambda: Krum(num_byzantine=1),
    "multi_krum": lambda: MultiKrum(num_byzantine=1),
}
each_robust = pytest.mark.parametrize("make", ROBUST.values(), ids=ROBUST.keys())


# Hand-worked references ------------------------------------------------------------------


def test_median_even_count_is_the_mean_of_the_two_middle_values():
    # column 0: sorted [1, 2, 5, 100] -> (2 + 5) / 2 = 3.5; column 1 is its negation
    out = aggregate(CoordinateMedian(), [[1, -1], [5, -5], [2, -2], [100, -100]])
    assert out.tolist() == [3.5, -3.5]


def test_median_odd_count_and_weights_ignored():
    # sorted [1, 2, 5] -> 2 and [-5, -2, -1] -> -2; a huge weight on 5 changes nothing
    out = aggregate(CoordinateMedian(), [[1, -1], [5, -5], [2, -2]], weights=[1, 1e9, 1])
    assert out.tolist() == [2.0, -2.0]
    assert aggregate(CoordinateMedian(), [[3.0, 4.0]]).tolist() == [3.0, 4.0]


def test_trimmed_mean_drops_floor_beta_n_per_side():
    # beta=0.25, n=4 -> 1 per side: [1, 2, 5, 100] -> mean(2, 5) = 3.5
    assert aggregate(TrimmedMean(0.25), [[1], [5], [2], [100]]).tolist() == [3.5]
    # beta=0.2, n=5 -> 1 per side: [-50, 1, 2, 3, 10] -> mean(1, 2, 3) = 2
    out = aggregate(TrimmedMean(0.2), [[10, 0], [1, 0], [3, 6], [2, 0], [-50, 0]])
    assert out.tolist() == [2.0, 0.0]
    # beta=0.1, n=5 -> floor(0.5) = 0 trimmed: the plain mean (10+1+3+2-50)/5 = -6.8
    out = aggregate(TrimmedMean(0.1), [[10], [1], [3], [2], [-50]])
    assert out.item() == pytest.approx(-6.8)


# Points x = 0, 1, 3, 10 as [x, -x] (squared distances doubled). With f=0 each score sums the
# 2 nearest: 0 -> 2*(1+9)=20, 1 -> 2*(1+4)=10, 3 -> 2*(4+9)=26, 10 -> 2*(49+81)=260.
KRUM_ROWS = [[0, 0], [1, -1], [3, -3], [10, -10]]


def test_krum_scores_and_pick_by_hand():
    agg = Krum(num_byzantine=0)
    assert aggregate(agg, KRUM_ROWS).tolist() == [1.0, -1.0]
    assert agg.scores is not None and agg.scores.tolist() == [20.0, 10.0, 26.0, 260.0]
    assert agg.selected == [1]


def test_multi_krum_averages_the_best_m_weighted_by_weight():
    # best two: x=1 (score 10, weight 3) and x=0 (score 20, weight 1) -> (3*1 + 1*0) / 4
    agg = MultiKrum(num_byzantine=0, multi=2)
    out = aggregate(agg, KRUM_ROWS, weights=[1, 3, 5, 7])
    assert agg.selected == [1, 0]
    assert out.tolist() == [0.75, -0.75]
    # default m = n - f = 3 with f=1 (k=1 nearest: 0->2, 1->2, 3->8, 10->98): x=0, 1, 3
    agg = MultiKrum(num_byzantine=1)
    out = aggregate(agg, KRUM_ROWS, weights=[1, 1, 2, 1])
    assert sorted(agg.selected) == [0, 1, 2]
    assert out.tolist() == pytest.approx([7 / 4, -7 / 4])  # (0 + 1 + 2*3) / 4


# Properties -----------------------------------------------------------------------------


@each_robust
def test_reused_buffer_is_copied_on_add(make):
    rows = [[float(i), float(-i), float(i * i)] for i in (3, 0, 6, 1, 5, 2, 40)]
    shared = aggregate(make(), rows)  # one tensor object, overwritten between adds
    fresh = make()
    fresh.reset(torch.zeros(3))
    for r in rows:
        fresh.add(torch.tensor(r), 1.0)
    assert torch.equal(shared, fresh.result())
    assert not torch.equal(shared, torch.tensor(rows[-1]))


@each_robust
def test_one_huge_outlier_barely_moves_robust_aggregates(make):
    agg = make()
    g = torch.Generator().manual_seed(0)
    honest = (1.0 + 0.01 * torch.randn(9, 50, generator=g)).tolist()
    rows = [*honest, [1e6] * 50]
    mean = aggregate(fedloom.WeightedMean(), rows)
    assert (mean - 1).abs().min() > 1e4
    out = aggregate(agg, rows)
    assert (out - 1).abs().max() < 0.05


def test_krum_picks_the_honest_cluster_against_colluders():
    g = torch.Generator().manual_seed(1)
    honest = 0.1 * torch.randn(6, 20, generator=g)
    byzantine = 5.0 + 0.001 * torch.randn(3, 20, generator=g)  # tight, far, colluding
    rows = torch.cat([byzantine, honest]).tolist()
    krum, multi = Krum(num_byzantine=3), MultiKrum(num_byzantine=3)
    aggregate(krum, rows)
    assert krum.selected[0] >= 3
    out = aggregate(multi, rows)
    assert sorted(multi.selected) == list(range(3, 9))
    assert torch.allclose(out, honest.mean(dim=0), atol=1e-6)


def test_nan_update_is_treated_as_far_away():
    rows = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [float("nan"), 1.0]]
    agg = Krum(num_byzantine=1)
    out = aggregate(agg, rows)
    assert agg.selected[0] != 3 and torch.isfinite(out).all()


def test_stack_is_reused_across_rounds_and_grows():
    agg = CoordinateMedian()
    rows = [[float(i)] * 3 for i in range(11)]  # grows past the initial capacity twice
    assert aggregate(agg, rows).tolist() == [5.0] * 3
    stack = agg._stack  # private: storage reuse is a cost, no result shows it
    assert aggregate(agg, rows[:4]).tolist() == [1.5] * 3  # next round: same storage
    assert agg._stack is stack and agg.count == 4
    assert aggregate(agg, [[1.0, 2.0], [3.0, 4.0]]).tolist() == [2.0, 3.0]  # new shape


# Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta)


def test_krum_needs_n_minus_f_minus_2_at_least_1():
    with pytest.raises(ValueError, match=r"n=3, f=1"):
        aggregate(Krum(num_byzantine=1), [[0.0], [1.0], [2.0]])
    with pytest.raises(ValueError, match="multi=5"):
        aggregate(MultiKrum(0, multi=5), KRUM_ROWS)
    with pytest.raises(ValueError, match="num_byzantine"):
        Krum(num_byzantine=-1)
    with pytest.raises(ValueError, match="multi"):
        MultiKrum(multi=0)


@each_robust
def test_misuse_errors(make):
    agg = make()
    with pytest.raises(RuntimeError, match="before reset"):
        agg.add(torch.zeros(2), 1.0)
    agg.reset(torch.zeros(2))
    with pytest.raises((RuntimeError, ValueError)):
        agg.result()  # nothing added
    with pytest.raises(ValueError, match="weight"):
        agg.add(torch.zeros(2), -1.0)
    with pytest.raises(ValueError, match="expected 2"):
        agg.add(torch.zeros(3), 1.0)


# Registry, FedAvg, config, state ----------------------------------------------------------


def test_registry_names():
    assert AGGREGATORS.get("median") is CoordinateMedian
    assert AGGREGATORS.get("trimmed_mean") is TrimmedMean
    assert AGGREGATORS.get("krum") is Krum
    assert AGGREGATORS.get("multi_krum") is MultiKrum
    assert AGGREGATORS.get("trimmed_mean")(beta=0.2).beta == 0.2


def test_config_builds_a_robust_fedavg():
    options = {"aggregator": {"name": "multi_krum", "num_byzantine": 1, "multi": 2}}
    strategy = build_strategy(Config(strategy={"name": "fedavg", "options": options}))
    assert isinstance(strategy.aggregator, MultiKrum) and strategy.aggregator.multi == 2
    bad = {"aggregator": {"name": "trimmed_mean", "beta": 0.6}}
    with pytest.raises(ConfigError, match="beta"):
        build_strategy(Config(strategy={"name": "fedavg", "options": bad}))


@each_robust
def test_fedavg_with_a_robust_aggregator(make):
    agg = make()
    rows = [[1.0, 2.0], [1.1, 2.1], [0.9, 1.9], [1.0, 2.0], [1e6, -1e6]]
    buf = torch.empty(2)

    def updates():  # one shared buffer, as the simulation hands them out
        for i, r in enumerate(rows):
            buf.copy_(torch.tensor(r))
            yield ClientUpdate(i, buf, num_samples=10 + i)

    strategy = fedloom.FedAvg(aggregator=agg)
    global_params = torch.zeros(2)
    out = strategy.aggregate(1, global_params, updates())
    assert out is global_params
    assert torch.allclose(global_params, torch.tensor([1.0, 2.0]), atol=0.11)
    strategy.load_state_dict(strategy.state_dict())


@each_robust
def test_state_dict_round_trip_is_stateless(make):
    agg = make()
    assert agg.state_dict() == {}
    agg.load_state_dict({})
    agg.load_state_dict(agg.state_dict())
    assert aggregate(agg, KRUM_ROWS).shape == (2,)
