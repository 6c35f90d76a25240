"""The ``[privacy]`` section: a config run is DP-FedAvg with its epsilon recorded, the budget
stops it, and combinations that would break the guarantee are refused naming the keys."""

from __future__ import annotations

import re

import pytest
from conftest import run_overrides

import fedloom
from fedloom.errors import ConfigError
from fedloom.observe import read_metrics
from fedloom.privacy import Accountant, calibrate_noise_multiplier
from fedloom.stages import Staged


def test_a_config_run_with_privacy_records_the_accountants_epsilon(tmp_path):
    over = run_overrides(
        tmp_path, "dp", rounds=3, **{"privacy.noise_multiplier": 1.2, "privacy.clip_norm": 0.5}
    )
    exp = fedloom.Experiment.from_config(None, over)
    assert isinstance(exp.federation.strategy, Staged)
    result = exp.run()
    eps = [r["epsilon"] for r in read_metrics(exp.run_dir / "metrics.jsonl") if "epsilon" in r]
    # 3 of 10 clients a round: q = 0.3; an independent accountant over the same rounds
    acc = Accountant(1e-5)
    expected = []
    for _ in range(3):
        acc.step(0.3, 1.2)
        expected.append(acc.epsilon())
    assert eps == pytest.approx(expected, rel=1e-9) and result.history[-1]["clip_norm"] == 0.5


def test_target_epsilon_alone_calibrates_the_noise_and_stops_within_budget(tmp_path):
    over = run_overrides(tmp_path, "budget", rounds=4, **{"privacy.target_epsilon": 8.0})
    exp = fedloom.Experiment.from_config(None, over)
    z = calibrate_noise_multiplier(8.0, 1e-5, 4, 0.3)
    stage = exp.federation.strategy.stages[0]  # type: ignore[attr-defined]
    assert stage.noise_multiplier == pytest.approx(z)
    result = exp.run()
    assert len(result.history) == 4 and result.history[-1]["epsilon"] <= 8.0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"strategy.options.aggregator": "median"}, "strategy.options.aggregator = 'median'"),
        ({"strategy.name": "scaffold"}, "strategy.name = 'scaffold'"),
        ({"strategy.name": "fedasync"}, "strategy.name = 'fedasync'"),
        ({"privacy.mode": "shuffle"}, "privacy.mode"),
        ({"privacy.mode": "local", "privacy.target_epsilon": 2.0}, "privacy.target_epsilon"),
        ({"privacy.clip_norm": 0}, "privacy.clip_norm"),
        ({"privacy.delta": 1.5}, "privacy.delta"),
    ],
)
def test_combinations_that_break_the_guarantee_are_refused_naming_the_keys(
    tmp_path, extra, named
):
    over = run_overrides(tmp_path, "bad", **{"privacy.noise_multiplier": 1.0, **extra})
    with pytest.raises((ConfigError, ValueError), match=re.escape(named)):
        fedloom.Experiment.from_config(None, over)


def test_no_noise_multiplier_and_no_target_is_refused(tmp_path):
    over = run_overrides(tmp_path, "x", **{"privacy.delta": 1e-5})
    with pytest.raises(ConfigError, match=r"privacy\.noise_multiplier or privacy\.target_epsilon"):
        fedloom.Experiment.from_config(None, over)


def test_secure_aggregation_and_distributed_dp_from_the_config(tmp_path):
    """Central DP then SecAgg+ (last), or distributed DP: each a stage list from the config;
    the secure runs record their protocol figures and the epsilon; a deployment is pointed
    at ``[runtime.secagg]``, the network runtime's SecAgg+."""
    from fedloom.privacy.distributed import DistributedDP
    from fedloom.privacy.secagg import SecureAggregation

    keys = {"privacy.noise_multiplier": 1.0, "privacy.secure_aggregation": True}
    exp = fedloom.Experiment.from_config(None, run_overrides(tmp_path, "sa", **keys))
    stages = exp.federation.strategy.stages  # type: ignore[attr-defined]
    assert [type(s).__name__ for s in stages] == ["CentralDP", "SecureAggregation"]
    assert isinstance(stages[1], SecureAggregation) and stages[1].clipping_range == 1.0
    record = exp.run().history[-1]
    assert record["secagg_survivors"] == 3 and "epsilon" in record

    keys = {"privacy.mode": "distributed", "privacy.noise_multiplier": 1.0}
    exp = fedloom.Experiment.from_config(None, run_overrides(tmp_path, "ddp", **keys))
    (stage,) = exp.federation.strategy.stages  # type: ignore[attr-defined]
    assert isinstance(stage, DistributedDP)
    assert "epsilon" in exp.run().history[-1]



def test_a_deployment_runs_distributed_dp_and_refuses_what_cannot_work(tmp_path):
    """``mode = "distributed"`` deploys: the aggregator's stage accounts, its SecAgg+ settings
    carry the [privacy] section's protocol keys and noise. Central DP with secure aggregation
    (the aggregator would clip what it never sees) and a [runtime.secagg] key that
    contradicts [privacy] are refused, naming the keys."""
    from fedloom.deploy.roles import aggregator
    from fedloom.privacy.ddp_noise import SkellamShares
    from fedloom.privacy.distributed_net import DeployedDistributedDP

    keys = {
        "privacy.mode": "distributed", "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.5,
        "runtime.secagg.stage_timeout": 7.0,
    }  # fmt: skip
    exp = fedloom.Experiment.from_config(
        None, run_overrides(tmp_path, "net", **keys), backend=aggregator("127.0.0.1:0")
    )
    try:
        (stage,) = exp.federation.strategy.stages  # type: ignore[attr-defined]
        assert isinstance(stage, DeployedDistributedDP)
        assert stage.step == pytest.approx(2 * 0.5 / (2**16 - 1))
        settings = exp.federation.backend.secagg.settings  # type: ignore[attr-defined]
        assert settings.noise == SkellamShares(1.0, 0.5)
        assert (settings.clipping_range, settings.stage_timeout) == (0.5, 7.0)
    finally:
        exp.federation.backend.stop()  # type: ignore[attr-defined]

    refused = [
        ({"privacy.mode": "central", "privacy.secure_aggregation": True},
         r"privacy\.secure_aggregation runs in simulation"),
        ({"privacy.mode": "central"}, r"'central' cannot be combined with \[runtime\.secagg\]"),
        ({"runtime.secagg.clipping_range": 1.0},
         r"runtime\.secagg\.clipping_range = 1\.0 differs from the privacy section's 0\.5"),
        ({"privacy.noise_multiplier": "drop"}, r"needs privacy\.noise_multiplier"),
    ]  # fmt: skip
    for change, match in refused:
        changed = {k: v for k, v in {**keys, **change}.items() if v != "drop"}
        with pytest.raises(ConfigError, match=match):
            fedloom.Experiment.from_config(
                None, run_overrides(tmp_path, "bad", **changed),
                backend=aggregator("127.0.0.1:0"),
            )  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "metric"), [("local", "local_epsilon"), ("dpsgd", "sample_epsilon")]
)
def test_local_and_sample_level_dp_from_the_config_report_each_clients_epsilon(
    tmp_path, mode, metric
):
    keys = {"privacy.mode": mode, "privacy.noise_multiplier": 1.0, "rounds": 2}
    exp = fedloom.Experiment.from_config(None, run_overrides(tmp_path, mode, **keys))
    (stage,) = exp.federation.strategy.stages  # type: ignore[attr-defined]
    assert stage.noise_multiplier == 1.0
    assert exp.run().history[-1][f"{metric}_max"] > 0


def test_compression_composes_with_central_dp_and_is_refused_with_secure_aggregation(tmp_path):
    keys = {"privacy.noise_multiplier": 1.0, "compression.up": ["q8"], "rounds": 1}
    result = fedloom.Experiment.from_config(None, run_overrides(tmp_path, "cdp", **keys)).run()
    assert result.history[-1]["epsilon"] > 0
    keys["privacy.secure_aggregation"] = True
    with pytest.raises(ConfigError, match=r"compression\.up = \['q8'\] cannot be combined"):
        fedloom.Experiment.from_config(None, run_overrides(tmp_path, "sa", **keys))
