"""The own loop and a strategy's client part (FedProx, SCAFFOLD, FedDyn, FedNova applied with
``job.client_part`` equal the simulation bit for bit; FedProx's loss term; what is refused
and when), and ``LocalFederation`` with asynchronous strategies (versions, staleness)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedloom
from examples.own_loop import client_data, make_model, train
from fedloom import LocalFederation
from fedloom.runtime import JobError

from .conftest import base_config, read_metrics, run_dir, simulate, with_changes

STRATEGIES = {
    "fedprox": {"mu": 0.5},
    "scaffold": {},
    "feddyn": {"alpha": 0.1},
    "fednova": {},
    "clustered": {},  # k-means clusters: a client starts from its cluster's model
}


def config(out_dir, name: str, strategy: str, **options):
    cfg = base_config(out_dir, name)
    return with_changes(
        cfg,
        rounds=2,
        **{
            "data.partition": "iid",
            "strategy": {"name": strategy, "clients_per_round": 3, "options": options},
        },
    )


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_client_part_in_the_own_loop_equals_the_simulation(tmp_path, strategy):
    """The example's loop wraps its optimizer with job.client_part: the strategy's client part
    (gradient corrections, SCAFFOLD's c_i kept across rounds, FedNova's step norm) runs as
    in the engine, and the final model is the simulation's, bit for bit."""
    cfg = config(tmp_path / "local", "parts", strategy, **STRATEGIES[strategy])
    if strategy == "clustered":
        cfg = with_changes(cfg, rounds=3, **{"strategy.clusters": 2})
    fl = LocalFederation.from_config(cfg)
    data, parts = client_data(fl.seed, 4)
    assert train(fl, data, parts) == 3 * cfg["rounds"]
    sim, _ = simulate(cfg, tmp_path / "sim")
    assert torch.equal(fl.result.params, sim.params)
    assert [r["clients"] for r in fl.result.history] == [3] * cfg["rounds"]  # FedNova's norm
    if strategy != "fednova":  # equal steps everywhere (iid): FedNova is FedAvg here
        avg = with_changes(cfg, name="avg", strategy={"name": "fedavg"})
        fedavg, _ = simulate(with_changes(avg, **{"strategy.clients_per_round": 3}), tmp_path)
        assert not torch.equal(fedavg.params, sim.params)  # the part changed the training


def test_client_states_are_checkpointed_and_a_resumed_run_equals_the_simulation(tmp_path):
    """SCAFFOLD's c_i lives in each client's job.state; a LocalFederation checkpoints it with
    the run, so one round, then --resume to three, is the three-round simulation."""
    cfg = with_changes(config(tmp_path / "local", "resume", "scaffold"), rounds=3)
    fl = LocalFederation.from_config(with_changes(cfg, rounds=1))
    data, parts = client_data(fl.seed, 4)
    assert train(fl, data, parts) == 3
    again = LocalFederation.from_config(cfg, resume=True)
    assert train(again, data, parts) == 6
    sim, _ = simulate(cfg, tmp_path / "sim")
    assert torch.equal(again.result.params, sim.params)


def regularized_train(fl, data, parts, lr: float = 0.05, batch_size: int = 20) -> None:
    """The example's loop with FedProx as a loss term instead of an optimizer hook."""
    model = make_model()
    for job in fl.jobs():
        idx = parts[job.client_id]
        job.load_into(model)
        torch.manual_seed(job.seed)
        optimizer = fedloom.optim.SGD(model.parameters(), lr=lr)
        order = idx[torch.randperm(len(idx), generator=job.generator)]
        x, y = data.train_x[order], data.train_y[order]
        for i in range(0, len(order), batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size])
            (loss + job.regularizer(model)).backward()
            optimizer.step()
        job.upload(model, num_samples=len(idx))


def test_fedprox_as_a_loss_term_trains_what_the_hook_trains(tmp_path):
    cfg = config(tmp_path / "local", "prox", "fedprox", mu=0.5)
    fl = LocalFederation.from_config(cfg)
    data, parts = client_data(fl.seed, 4)
    regularized_train(fl, data, parts)
    sim, _ = simulate(cfg, tmp_path / "sim")
    fedavg, _ = simulate(config(tmp_path / "avg", "avg", "fedavg"), tmp_path / "avg")
    assert torch.allclose(fl.result.params, sim.params, atol=1e-5)  # autograd vs the hook
    assert (fedavg.params - sim.params).abs().max() > 1e-3


def test_an_upload_without_the_client_part_is_refused_unless_manual(tmp_path):
    cfg = config(tmp_path / "local", "noprox", "fedprox", mu=0.5)
    fl = LocalFederation.from_config(cfg)
    jobs = fl.jobs()
    job = next(jobs)
    assert job.algorithm == {"name": "fedprox", "mu": 0.5}
    with pytest.raises(JobError, match=r"client part fedprox\(mu=0.5\) was not applied"):
        job.upload(job.model_state(), num_samples=1)
    assert not job.uploaded
    jobs.close()  # leaving the loop stops the run
    assert fl.result is None

    manual = LocalFederation.from_config(with_changes(cfg, name="manual"), manual_client_part=True)
    uploads = [job.upload(job.model_state(), num_samples=1) for job in manual.jobs()]
    assert uploads == [True] * 6 and manual.result.rounds == 2


@pytest.mark.parametrize(
    ("strategy", "options", "named"),
    [
        ("ditto", {"lam": 0.1}, r"ditto\(lam=0.1, personal_epochs=None\)"),
        ("ifca", {}, r"ifca\(clusters=2\)"),
        ("scaffold", {"option": "I"}, r"scaffold\(option='I'\).*option I"),
    ],
)
def test_a_client_part_that_needs_the_task_is_refused_before_training(
    tmp_path, strategy, options, named
):
    cfg = config(tmp_path / "local", "needs", strategy, **options)
    if strategy == "ifca":
        cfg = with_changes(cfg, **{"strategy.clusters": 2})
    fl = LocalFederation.from_config(cfg)
    with pytest.raises(JobError, match=named):  # noqa: PT012 - the loop's first step raises
        for _ in fl.jobs():
            raise AssertionError("a job reached the loop")
    assert fl.result is None and not fl._thread.is_alive()
    manual = LocalFederation.from_config(with_changes(cfg, name="manual"), manual_client_part=True)
    for job in manual.jobs():  # the loop says it applies the part itself: jobs come
        assert job.algorithm["name"] == strategy
        with pytest.raises(JobError, match="cannot run in an own loop"):
            job.client_part(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1))
        with pytest.raises(JobError, match="not a loss term"):
            job.regularizer(make_model())
        break


def test_client_part_without_a_strategy_part_is_a_no_op():
    fl = LocalFederation(make_model, fedloom.FedAvg(clients_per_round=1), num_samples=[5], rounds=1)
    model = make_model()
    for job in fl.jobs():
        assert job.algorithm is None and float(job.regularizer(model)) == 0.0
        job.load_into(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with job.client_part(model, optimizer) as part:
            pass
        assert part.done and part.steps == 0 and part.metrics == {}
        assert job.upload(model, num_samples=5)


# -- asynchronous strategies -------------------------------------------------------------------
def scalar_model() -> nn.Module:
    return nn.Linear(1, 1, bias=False)


def test_async_local_federation_has_the_runtime_versions_and_staleness():
    """FedAsync (alpha 0.5, no staleness discount) over 3 clients that always train: each
    client holds a job from the start and asks again once its update was taken in, so the
    jobs are (0, v0), (1, v0), (2, v0), (0, v1), (1, v2) and the staleness 0, 1, 2, 2, 2;
    every upload is its base plus (client + 1), and the model follows FedAsync's rule."""
    strategy = fedloom.FedAsync(alpha=0.5, staleness="constant")
    fl = LocalFederation(scalar_model, strategy, num_samples=[1, 1, 1], rounds=5, seed=3)
    assert fl.asynchronous
    seen, bases = [], {}
    for job in fl.jobs():
        assert job.round == job.version + 1 and job.config == {}
        base = job.model_state()["weight"]
        bases[job.version] = base.clone()
        seen.append((job.client_id, job.version))
        job.upload({"weight": base + (job.client_id + 1)}, num_samples=1)
    assert seen == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 2)]
    assert [r["staleness_max"] for r in fl.result.history] == [0, 1, 2, 2, 2]
    w = bases[0]
    for cid, version in seen:
        w = 0.5 * w + 0.5 * (bases[version] + (cid + 1))
    assert torch.allclose(fl.result.params, w.reshape(-1))
    assert fl.result.rounds == 5


def test_async_local_federation_from_a_config_is_deterministic(tmp_path):
    """FedBuff from a config (the async process test's run) with the example's loop, twice:
    the same model each time, a record per version with its staleness."""
    cfg = with_changes(
        base_config(tmp_path / "a", "async"),
        rounds=3,
        **{
            "data.partition": "iid",
            "data.num_clients": 2,
            "strategy": {"name": "fedbuff", "options": {"buffer_size": 2}},
        },
    )
    results = []
    for name in ("one", "two"):
        fl = LocalFederation.from_config(with_changes(cfg, name=name))
        data, parts = client_data(fl.seed, 2)
        assert train(fl, data, parts) == 6  # 3 versions x a buffer of 2
        results.append(fl.result.params)
        records = read_metrics(run_dir(with_changes(cfg, name=name)))
        assert [r["version"] for r in records] == [1, 2, 3]
        assert [r["staleness_max"] for r in records] == [0, 1, 1]
    assert torch.equal(*results)


def test_client_side_dp_from_the_config_in_a_local_federation(tmp_path):
    """A LocalFederation is one party, as the simulation: local DP in the user's loop draws
    its noise from the run seed and equals the simulation bit for bit, epsilons included.
    DP-SGD needs the task's sample count: its first job is refused, naming it."""
    keys = {"privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.5}
    cfg = with_changes(config(tmp_path / "local", "local", "fedavg"), **keys)
    cfg = with_changes(cfg, **{"privacy.mode": "local"})
    fl = LocalFederation.from_config(cfg)
    data, parts = client_data(fl.seed, 4)
    assert train(fl, data, parts) == 3 * cfg["rounds"]
    sim, _ = simulate(cfg, tmp_path / "sim")
    assert torch.equal(fl.result.params, sim.params)
    eps = [r["local_epsilon_max"] for r in fl.result.history]
    assert eps == [r["local_epsilon_max"] for r in sim.history] and eps[0] > 0

    cfg = with_changes(cfg, name="dpsgd", **{"privacy.mode": "dpsgd"})
    fl = LocalFederation.from_config(cfg)
    with pytest.raises(JobError, match=r"client part dpsgd\(.*cannot run in an own loop"):
        train(fl, data, parts)
