"""SecAgg+ as a stage of a federation: the model equals plain FedAvg's to the quantisation
bound, dropouts leave the sum of the survivors, an aborted round is skipped with the model
unchanged and the run goes on, runs are deterministic and resumable, and strategies that need
more than the sum are refused by key.

The bound: stochastic rounding moves each coordinate of each client's delta by less than one
level ``step = 2c / (L - 1)``, so the unmasked sum of m deltas is within ``m * step`` per
coordinate of their true sum, and the mean Staged forms (sum / cohort) within
``m * step / cohort``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed

from fedloom import FedAdam, FedAvg, Federation
from fedloom.aggregation import CoordinateMedian, Krum, TrimmedMean
from fedloom.algorithms.scaffold import Scaffold
from fedloom.privacy import Staged
from fedloom.privacy.secagg import Dropouts, SecAggConfig, SecureAggregation, message_bytes
from fedloom.update import ClientUpdate


def federation(strategy, rounds: int = 3, seed: int = 0, **kw) -> Federation:
    return Federation(make_tiny_task(), strategy, rounds=rounds, seed=seed, **kw)


def secagg(inner=None, **kw) -> Staged:
    kw.setdefault("clipping_range", 10.0)
    return Staged(inner or FedAvg(clients_per_round=3, weighted=False), [SecureAggregation(**kw)])


def test_one_round_equals_uniform_fedavg_within_the_quantisation_bound():
    a = federation(secagg(), rounds=1).run()
    b = federation(FedAvg(clients_per_round=3, weighted=False), rounds=1).run()
    step = SecAggConfig(3, 1, 3, 2, clipping_range=10.0).step
    err = float((a.params - b.params).abs().max())
    assert err <= 3 * step / 3 + 1e-6  # m * step / cohort, plus float32 rounding
    assert err > 0  # the sum did go through the quantiser
    rec = a.history[-1]
    assert rec["secagg_survivors"] == 3 and rec["secagg_aborted"] is False
    d = a.params.numel()
    assert rec["secagg_bytes_up_per_client"] > 4 * d  # the masked vector plus keys and shares


def test_a_longer_run_stays_close_with_a_fine_quantiser():
    a = federation(secagg(quantization_range=2**24, clipping_range=4.0), rounds=4).run()
    b = federation(FedAvg(clients_per_round=3, weighted=False), rounds=4).run()
    assert torch.allclose(a.params, b.params, atol=1e-4)


def staged_round(stage: SecureAggregation, deltas: list[torch.Tensor], g: torch.Tensor):
    """One aggregation of ``g + delta`` by a six-client Staged FedAvg; the new model."""
    s = Staged(FedAvg(clients_per_round=len(deltas), weighted=False), [stage])
    s.start(5)
    s.configure(1, list(range(len(deltas))), np.random.default_rng(0))
    updates = [ClientUpdate(i, g + dl, 1) for i, dl in enumerate(deltas)]
    params = g.clone()
    s.aggregate(1, params, iter(updates))
    # the plain sum Staged formed never held a delta: every buffer was reset to the model
    assert all(torch.equal(u.params, g) for u in updates)
    return params, s


def test_dropouts_leave_the_sum_of_the_survivors():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(500, generator=gen)
    deltas = [torch.randn(500, generator=gen) * 0.1 for _ in range(6)]
    drop = Dropouts(after_advertise=frozenset({1}), after_share_keys=frozenset({4}))
    stage = SecureAggregation(clipping_range=1.0, dropouts=lambda r, n: drop)
    params, s = staged_round(stage, deltas, g)
    survivors = [0, 2, 3, 5]
    expected = g + sum(deltas[i] for i in survivors) / 6  # the planned cohort divides
    step = SecAggConfig(6, 1, 5, 3, clipping_range=1.0).step
    assert float((params - expected).abs().max()) <= 4 * step / 6 + 1e-6
    assert s.round_record()["secagg_survivors"] == 4


def test_same_seed_same_model_and_resume_equals_no_interruption(tmp_path: Path):
    def make(rounds: int) -> Federation:
        return federation(secagg(dropout_rate=0.1), rounds=rounds)

    a, b = make(3).run(), make(3).run()
    assert torch.equal(a.params, b.params)
    resumed(make, tmp_path, rounds=4, stop=2)


def test_an_aborted_round_is_skipped_the_model_unchanged_and_the_run_goes_on():
    def drop(round: int, n: int) -> Dropouts:  # round 2 loses 2 of 3: below threshold 2
        return Dropouts(before_advertise=frozenset({0, 1})) if round == 2 else Dropouts()

    inner = FedAdam(0.05, clients_per_round=3)
    result = federation(secagg(inner, dropouts=drop), rounds=3, short_round="skip").run()
    assert result.rounds == 3
    skipped = result.history[1]
    assert skipped["secagg_aborted"] is True and "secure aggregation" in skipped["skipped"]
    assert "aborted" in skipped["secagg_abort_reason"]
    assert [r["secagg_aborted"] for r in result.history] == [False, True, False]
    # the skipped round left the model and FedAdam's moments as they were
    one = federation(secagg(FedAdam(0.05, clients_per_round=3)), rounds=1).run()
    two = federation(secagg(FedAdam(0.05, clients_per_round=3), dropouts=drop), rounds=2,
                     short_round="skip").run()  # fmt: skip
    assert torch.equal(one.params, two.params)


def test_the_default_retry_policy_retries_with_fresh_dropouts_then_goes_on(caplog):
    with caplog.at_level("WARNING", logger="fedloom"):
        result = federation(secagg(dropout_rate=0.5), rounds=4).run()
    assert result.rounds == 4
    retries = [r for r in caplog.messages if "retrying the round" in r]
    assert retries and all("secure aggregation round" in r for r in retries)
    # with this seed every round found enough survivors within its retries
    assert [r["secagg_aborted"] for r in result.history] == [False] * 4


def test_the_message_sizes_count_every_field():
    cfg = SecAggConfig(3, 10, 3, 2)
    assert message_bytes(np.zeros(10, dtype=np.uint32)) == 40
    assert message_bytes((b"ab", 1)) == 4 + 2 + 8
    with pytest.raises(TypeError):
        message_bytes(cfg.step)


@pytest.mark.parametrize(
    ("strategy", "keys"),
    [
        (FedAvg(aggregator=Krum(1)), "strategy.options.aggregator = 'krum'"),
        (FedAvg(aggregator=CoordinateMedian()), "strategy.options.aggregator = 'median'"),
        (FedAdam(0.1, aggregator=TrimmedMean(0.1)), "strategy.options.aggregator = 'trimmed_mean'"),
        (Scaffold(), "strategy.name = 'scaffold'"),
    ],
)
def test_strategies_that_need_more_than_the_sum_are_refused_by_key(strategy, keys):
    with pytest.raises(ValueError, match="secagg") as e:
        Staged(strategy, [SecureAggregation()])
    assert keys in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"modulus": 3}, "modulus"),
        ({"quantization_range": 1}, "quantization_range"),
        ({"clipping_range": 0.0}, "clipping_range"),
        ({"dropout_rate": 1.5}, "dropout_rate"),
        ({"num_shares": 0}, "num_shares"),
        ({"num_shares": 5, "reconstruction_threshold": 6}, "reconstruction_threshold"),
        ({"reconstruction_threshold": 0}, "reconstruction_threshold"),
    ],
)
def test_invalid_parameters_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SecureAggregation(**kwargs)


def test_a_modulus_too_small_for_the_cohort_is_refused_before_training():
    stage = SecureAggregation(quantization_range=2**16, modulus=2**18)
    s = Staged(FedAvg(clients_per_round=5), [stage])
    s.start(0)
    with pytest.raises(ValueError, match="modulus"):
        s.configure(1, list(range(6)), np.random.default_rng(0))
