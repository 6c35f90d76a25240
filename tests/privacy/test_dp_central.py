"""Central DP (DP-FedAvg) as a stage: the noise has the configured std and is the same for
the same seed, runs record epsilon and stop before the budget is exceeded, resume keeps the
accountant, the server optimisers take the noised mean, and wrong combinations are refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed

from fedloom import FedAdam, FedAvg, Federation
from fedloom.aggregation import CoordinateMedian, Krum, TrimmedMean
from fedloom.algorithms.fedavgm import FedAvgM
from fedloom.algorithms.scaffold import Scaffold
from fedloom.errors import QuorumError
from fedloom.privacy import Accountant, CentralDP, Staged, privacy_stage
from fedloom.simulation import InProcessClients
from fedloom.strategies import FedProx
from fedloom.update import ClientUpdate


def noised_sum(stage: CentralDP, n: int, rnd: int = 1, seed: int = 0) -> torch.Tensor:
    """The stage's noise on a zero sum of ``n`` values, in round ``rnd`` of a run ``seed``."""
    s = Staged(FedAvg(clients_per_round=4), [stage])
    s.start(seed)
    s.configure(rnd, list(range(40)), np.random.default_rng(0))
    return stage.process_aggregate(rnd, torch.zeros(n), 4)


def test_the_noise_has_the_configured_std():
    """n draws: the sample variance over sigma^2 has std sqrt(2 / (n - 1)) and the mean
    sigma / sqrt(n); both must lie within 5 of their standard errors."""
    z, clip, n = 1.3, 0.4, 400_000
    noise = noised_sum(CentralDP(z, clip), n).double()
    sigma = z * clip
    assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(n)
    assert abs(float(noise.var()) / sigma**2 - 1) < 5 * math.sqrt(2 / (n - 1))


def test_noise_is_fixed_by_seed_and_round():
    a = noised_sum(CentralDP(1.0, 1.0), 1000, rnd=3, seed=7)
    assert torch.equal(a, noised_sum(CentralDP(1.0, 1.0), 1000, rnd=3, seed=7))
    assert not torch.equal(a, noised_sum(CentralDP(1.0, 1.0), 1000, rnd=4, seed=7))
    assert not torch.equal(a, noised_sum(CentralDP(1.0, 1.0), 1000, rnd=3, seed=8))


def test_the_noised_mean_is_the_step_of_fedavg_and_the_server_optimisers():
    """All clients send the global model: the step is the noise over the cohort, for FedAvg
    exactly, and FedAvgM without momentum at server_lr 1 takes the same step."""
    n, g = 300, torch.randn(300)
    updates = [ClientUpdate(i, g.clone(), 5) for i in range(4)]
    steps = []
    for inner in (FedAvg(clients_per_round=4), FedAvgM(1.0, momentum=0.0, clients_per_round=4)):
        s = Staged(inner, [CentralDP(2.0, 0.5)])
        s.start(0)
        s.configure(1, list(range(40)), np.random.default_rng(0))
        params = g.clone()
        s.aggregate(1, params, updates)
        steps.append(params - g)
    noise = noised_sum(CentralDP(2.0, 0.5), n)
    assert torch.allclose(steps[0], noise / 4, atol=1e-6)
    assert torch.allclose(steps[1], steps[0], atol=1e-6)


def federation(strategy, rounds: int = 4, seed: int = 0, task=None) -> Federation:
    return Federation(task or make_tiny_task(), strategy, rounds=rounds, seed=seed, eval_every=2)


def dp(**kw) -> Staged:
    inner = kw.pop("inner", None) or FedAvg(clients_per_round=3)
    return Staged(inner, [CentralDP(kw.pop("z", 1.0), kw.pop("clip", 0.5), 1e-5, **kw)])


def test_a_run_records_epsilon_each_round_as_the_accountant_computes_it():
    fed = federation(dp(), rounds=4)
    result = fed.run()
    eps = [r["epsilon"] for r in result.history]
    acc = Accountant(1e-5)
    for e in eps:
        acc.step(3 / 6, 1.0)  # 3 of the tiny task's 6 clients
        assert e == acc.epsilon()
    assert eps == sorted(eps) and eps[0] > 0
    assert all(r["clip_norm"] == 0.5 for r in result.history)


def test_same_seed_same_model_and_noise_changes_it():
    a, b = federation(dp()).run(), federation(dp()).run()
    assert torch.equal(a.params, b.params)
    plain = federation(dp(z=0.0)).run()
    assert not torch.allclose(a.params, plain.params)


def test_without_noise_and_clipping_it_is_uniform_fedavg():
    a = federation(dp(z=0.0, clip=1e9)).run()
    b = federation(FedAvg(clients_per_round=3, weighted=False)).run()
    assert torch.allclose(a.params, b.params, atol=1e-5)
    assert "epsilon" not in a.history[-1]


@pytest.mark.parametrize("sampling_rate", [None, 0.5])
def test_the_run_stops_before_the_round_that_would_exceed_the_target(sampling_rate):
    target = 12.0
    result = federation(dp(target_epsilon=target, sampling_rate=sampling_rate), 40).run()
    assert result.stop_reason.startswith("privacy budget")
    assert "privacy.target_epsilon = 12" in result.stop_reason
    eps = [r["epsilon"] for r in result.history]
    assert 0 < result.rounds < 40 and len(eps) == result.rounds
    assert max(eps) <= target
    acc = Accountant(1e-5)
    acc.step(0.5, 1.0, result.rounds + 1)
    assert acc.epsilon() > target  # the next round would have exceeded it


def test_a_budget_too_small_for_one_round_runs_no_round():
    result = federation(dp(target_epsilon=0.01, sampling_rate=0.5), 5).run()
    assert result.rounds == 0 and result.history == []
    assert result.stop_reason.startswith("privacy budget")


@pytest.mark.parametrize("adaptive", [False, True])
def test_resume_keeps_the_accountant_and_the_clip(tmp_path: Path, adaptive: bool):
    extra = {"target_quantile": 0.5, "clip_count_stddev": 1.0} if adaptive else {}

    def make(rounds: int) -> Federation:
        return federation(dp(z=0.8, **extra), rounds=rounds)

    straight, again, state = resumed(make, tmp_path, rounds=5, stop=2)
    assert [r["epsilon"] for r in again.history] == [r["epsilon"] for r in straight.history]
    assert [r["clip_norm"] for r in again.history] == [r["clip_norm"] for r in straight.history]
    assert state["strategy"]["stages"][0]["accountant"]["runs"] == [[0.5, 0.8, 2]]
    assert again.strategy.state_dict() == straight.strategy.state_dict()


@pytest.mark.parametrize(
    "inner",
    [FedAdam(0.05, clients_per_round=3), FedProx(0.1, clients_per_round=3)],
    ids=["fedadam", "fedprox"],
)
def test_it_wraps_server_optimisers_and_fedavg_subclasses(inner):
    result = federation(dp(inner=inner, z=0.5), rounds=2).run()
    assert result.rounds == 2 and result.history[-1]["epsilon"] > 0
    assert torch.isfinite(result.params).all()


@pytest.mark.parametrize(
    ("strategy", "keys"),
    [
        (FedAvg(aggregator=Krum(1)), "strategy.options.aggregator = 'krum'"),
        (FedAvg(aggregator=CoordinateMedian()), "strategy.options.aggregator = 'median'"),
        (FedAdam(0.1, aggregator=TrimmedMean(0.1)), "strategy.options.aggregator = 'trimmed_mean'"),
        (Scaffold(), "strategy.name = 'scaffold'"),
    ],
)
def test_combinations_that_break_the_guarantee_are_refused(strategy, keys):
    with pytest.raises(ValueError, match=r"privacy\.mode = 'central'") as e:
        Staged(strategy, [CentralDP(1.0)])
    assert keys in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"target_quantile": 0.0}, "target_quantile"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"noise_multiplier": 0.0, "target_epsilon": 1.0}, "target_epsilon"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"target_quantile": 0.5, "clip_count_stddev": 0.4}, "clip_count_stddev"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_invalid_parameters_are_refused_by_name(kwargs, name):
    args = {"noise_multiplier": 1.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        CentralDP(**args)


def test_staged_state_needs_its_stages_and_a_seed():
    s = dp()
    with pytest.raises(ValueError, match="stages"):
        s.load_state_dict({"strategy": {}, "stages": []})
    with pytest.raises(RuntimeError, match="seed"):
        s.aggregate(1, torch.zeros(3), [])
    with pytest.raises(ValueError, match="already Staged"):
        Staged(s, [])


def test_the_config_section_builds_the_stage_and_calibrates_for_a_budget():
    stage = privacy_stage(
        "central", rounds=20, sampling_rate=0.5, target_epsilon=6.0, clip_norm=0.5
    )
    assert isinstance(stage, CentralDP) and stage.sampling_rate == 0.5
    acc = Accountant(1e-5)
    acc.step(0.5, stage.noise_multiplier, 20)
    assert 6.0 * 0.99 <= acc.epsilon() <= 6.0
    result = federation(Staged(FedAvg(clients_per_round=3), [stage]), rounds=20).run()
    assert result.rounds == 20 and result.history[-1]["epsilon"] <= 6.0  # the whole budget
    with pytest.raises(ValueError, match=r"privacy\.mode"):
        privacy_stage("local", rounds=5, sampling_rate=0.5, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"privacy\.clip"):
        privacy_stage("central", rounds=5, sampling_rate=0.5, noise_multiplier=1.0, clip=1.0)
    with pytest.raises(ValueError, match="target_epsilon"):
        privacy_stage("central", rounds=5, sampling_rate=0.5)


class ShortIn(InProcessClients):
    """The in-process clients, short of quorum in the rounds of ``short`` (as a network
    round whose clients dropped out): nothing is released there."""

    def __init__(self, task, short: set[int]):
        super().__init__(task, 0)
        self.short, self.now = short, 0

    def distribute(self, round: int, plan, global_params: torch.Tensor) -> None:
        self.now = round
        super().distribute(round, plan, global_params)

    def collect(self):
        if self.now in self.short:
            raise QuorumError(f"round {self.now}: short")
        return super().collect()


def test_a_round_short_of_quorum_spends_no_budget():
    task = make_tiny_task()
    fed = Federation(task, dp(), ShortIn(task, {2}), rounds=4, seed=0, short_round="skip")
    result = fed.run()
    assert "skipped" in result.history[1]
    eps = [r["epsilon"] for r in result.history]
    assert eps[1] == eps[0] and eps[2] > eps[1]
    acc = Accountant(1e-5)
    acc.step(0.5, 1.0, 3)  # three rounds released
    assert eps[3] == acc.epsilon()
