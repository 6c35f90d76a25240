"""Distributed DP: clients add Skellam noise before masking, so the securely aggregated sum
carries the central noise and no party holds an un-noised sum; the accountant charges the
noise that was in the sum, records epsilon each round and stops the run at the target.

Statistics: n draws of a variance-v variable give a sample variance whose ratio to v has
std sqrt(2 / (n - 1)) (near-Gaussian draws); tests allow 5 of those.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed

from fedloom import FedAvg, Federation
from fedloom.aggregation import Krum
from fedloom.errors import ConfigError
from fedloom.privacy import Accountant, Staged
from fedloom.privacy.distributed import DistributedDP
from fedloom.privacy.secagg import SecAggConfig
from fedloom.privacy.skellam import l2_sensitivity, skellam, tail_bound
from fedloom.update import ClientUpdate


def one_round(stage: DistributedDP, deltas: list[torch.Tensor]) -> torch.Tensor:
    """The sum the stage releases for ``deltas`` (q = 1: the whole population takes part)."""
    m, g = len(deltas), torch.zeros(deltas[0].numel(), dtype=torch.float64)
    s = Staged(FedAvg(clients_per_round=m, weighted=False), [stage])
    s.start(11)
    s.configure(1, list(range(m)), np.random.default_rng(0))
    params = g.clone()
    s.aggregate(1, params, iter([ClientUpdate(i, g + dl, 1) for i, dl in enumerate(deltas)]))
    return (params - g) * m


def expected_std(stage: DistributedDP, m: int, d: int) -> tuple[float, float]:
    """(noise std in float units, quantisation step) for m clients of length d."""
    cfg = SecAggConfig(m, d, m, m // 2 + 1, clipping_range=stage.clipping_range)
    sens = l2_sensitivity(stage.clip_norm, cfg.step, d)
    return stage.noise_multiplier * sens * cfg.step, cfg.step


def test_the_summed_noise_has_the_configured_variance():
    m, d = 5, 100_000
    stage = DistributedDP(1.3, clip_norm=0.5)
    noise = one_round(stage, [torch.zeros(d, dtype=torch.float64)] * m).numpy()
    sigma, step = expected_std(stage, m, d)
    # each zero delta sits at level (L - 1) / 2: rounding adds a variance of 1/4 level^2
    variance = sigma**2 + m * step**2 / 4
    assert abs(noise.mean()) < 5 * math.sqrt(variance / d)
    assert abs(noise.var() / variance - 1) < 5 * math.sqrt(2 / (d - 1))
    rec = stage.round_record()
    assert rec["noise_std"] == pytest.approx(sigma, rel=1e-12)
    assert rec["noise_multiplier_effective"] == pytest.approx(1.3, rel=1e-12)
    assert rec["skellam_rdp_excess"] < 1e-6  # the Gaussian accounting is tight here


def test_the_released_sum_is_the_clean_sum_plus_noise_never_the_clean_sum():
    """What the server unmasks is as far from the clipped sum as the noise std says, while
    the quantiser alone would put it within m steps per coordinate."""
    m, d, clip = 6, 50_000, 1.0
    gen = torch.Generator().manual_seed(3)
    deltas = [torch.randn(d, generator=gen, dtype=torch.float64) * 0.02 for _ in range(m)]
    stage = DistributedDP(0.8, clip_norm=clip)
    out = one_round(stage, deltas)
    clean = sum(dl * min(1.0, clip / float(dl.norm())) for dl in deltas)
    sigma, step = expected_std(stage, m, d)
    rms = float((out - clean).pow(2).mean().sqrt())
    assert abs(rms / sigma - 1) < 5 * math.sqrt(1 / (2 * (d - 1))) + m * step / sigma
    assert rms > 100 * m * step  # far beyond quantisation: the clean sum is not revealed
    assert abs(float(torch.corrcoef(torch.stack([out, clean]))[0, 1])) < 0.05


def federation(stage: DistributedDP, rounds: int) -> Federation:
    strategy = Staged(FedAvg(clients_per_round=3, weighted=False), [stage])
    return Federation(make_tiny_task(), strategy, rounds=rounds, seed=0)


def test_each_round_records_the_epsilon_of_the_noise_in_its_sum():
    result = federation(DistributedDP(1.0, clip_norm=0.5), rounds=3).run()
    acc = Accountant(1e-5)
    for rec in result.history:
        acc.step(3 / 6, rec["noise_multiplier_effective"])
        assert rec["epsilon"] == acc.epsilon()
        assert rec["noise_multiplier_effective"] == pytest.approx(1.0, rel=1e-12)
    assert result.history[0]["epsilon"] < result.history[-1]["epsilon"]


def test_fewer_survivors_leave_less_noise_and_cost_more_epsilon():
    from fedloom.privacy.secagg import Dropouts

    drop = Dropouts(after_share_keys=frozenset({0}))
    full = federation(DistributedDP(1.0, 0.5), 1).run().history[0]
    short = federation(DistributedDP(1.0, 0.5, dropouts=lambda r, n: drop), 1).run().history[0]
    assert short["secagg_survivors"] == 2
    assert short["noise_multiplier_effective"] == pytest.approx(math.sqrt(2 / 3), rel=1e-12)
    assert short["epsilon"] > full["epsilon"]


def test_the_target_epsilon_stops_the_run():
    result = federation(DistributedDP(1.0, 0.5, target_epsilon=12.0, sampling_rate=0.5), 40).run()
    assert result.stop_reason.startswith("privacy budget")
    assert 0 < result.rounds < 40 and max(r["epsilon"] for r in result.history) <= 12.0


def test_resume_keeps_the_accountant(tmp_path: Path):
    straight, again, state = resumed(
        lambda r: federation(DistributedDP(0.9, 0.5), r), tmp_path, rounds=4, stop=2
    )
    assert [r["epsilon"] for r in again.history] == [r["epsilon"] for r in straight.history]
    assert state["strategy"]["stages"][0]["accountant"]["runs"][0][2] == 2


def test_a_modulus_the_noisy_sum_could_wrap_is_refused():
    stage = DistributedDP(5.0, clip_norm=1.0, quantization_range=2**16, modulus=2**20)
    cfg = SecAggConfig(10, 10_000, 9, 5, clipping_range=1.0, modulus=2**20)
    stage._account.cohort = 10
    with pytest.raises(ConfigError, match=r"privacy\.modulus"):
        stage.check_fits(cfg)
    DistributedDP(5.0, clip_norm=1.0, quantization_range=2**8, modulus=2**20).check_fits(
        SecAggConfig(10, 10_000, 9, 5, quantization_range=2**8, modulus=2**20)
    )


def test_skellam_draws_and_the_tail_bound():
    draws = skellam(np.random.default_rng(0), 50.0, 200_000)
    assert draws.dtype == np.int64
    assert abs(draws.var() / 50.0 - 1) < 5 * math.sqrt(2 / 200_000)
    t = tail_bound(50.0, 200_000, p=1e-3)
    assert np.abs(draws).max() < t < 20 * math.sqrt(50.0)


def test_refusals_name_the_keys():
    with pytest.raises(ValueError, match=r"privacy\.mode = 'distributed'") as e:
        Staged(FedAvg(aggregator=Krum(1)), [DistributedDP(1.0)])
    assert "strategy.options.aggregator = 'krum'" in str(e.value)
    for kwargs, name in [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"dropout_tolerance": 1.0}, "dropout_tolerance"),
    ]:
        with pytest.raises(ValueError, match=name):
            DistributedDP(**{"noise_multiplier": 1.0, **kwargs})
