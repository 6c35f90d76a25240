"""Bring your own loop: ``fedloom.connect`` against real ``fedloom server`` processes (sync
with a client SIGKILLed mid-round and restarted, async), ``LocalFederation`` in-process, and
what a job refuses before sending anything."""

from __future__ import annotations

import math
import signal
import threading

import pytest
import torch
from torch import nn

import fedloom
from examples.own_loop import client_data, make_model, train
from fedloom import LocalFederation
from fedloom.runtime import AggregatorServer, JobError, RefusedError

from .conftest import (
    base_config,
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    wait_until,
    with_changes,
    write_config,
)

EXAMPLE = "examples/own_loop.py"


def own_config(out_dir, name: str, **runtime):
    cfg = base_config(out_dir, name, **runtime)
    return with_changes(cfg, **{"data.partition": "iid"})


def start_example(procs, address: str, cid: int, *more: str):
    args = [EXAMPLE, "--server", address, "--client-id", str(cid), "--task-id", "rt-test", *more]
    return procs.start(f"own loop {cid}", args)


def test_own_loop_processes_with_a_client_killed_mid_round_equal_the_simulation(tmp_path, procs):
    """A real aggregator and 4 example clients; client 0's first instance trains 5000 epochs
    and is SIGKILLed while training, a restarted one checks in again, is re-sent the round's
    work and the run finishes with the simulation's model, bit for bit."""
    address = f"127.0.0.1:{free_port()}"
    cfg = own_config(tmp_path / "net", "own", address=address, min_clients=4)
    config = write_config(tmp_path / "own.json", cfg)
    server = procs.fedloom("aggregator", "-v", "server", str(config), "--address", address)
    slow = start_example(procs, address, 0, "--epochs", "5000")
    others = [start_example(procs, address, c) for c in (1, 2, 3)]

    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process

    wait_until(lambda: "client 0 downloads round" in server.output(), 120, "client 0's job")
    wait_until(lambda: "client 0 checked in" in slow.output(), 10, "the slow client's log")
    assert slow.popen.poll() is None and "uploaded" not in slow.output()
    slow.popen.send_signal(signal.SIGKILL)
    assert slow.wait(10) == -signal.SIGKILL
    again = start_example(procs, address, 0)

    assert server.wait(120) == 0, procs.logs()
    for c in (*others, again):
        assert c.wait(60) == 0, procs.logs()
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
    metrics = read_metrics(run_dir(cfg))
    assert [r["clients"] for r in metrics] == [3, 3, 3]
    assert [r["accuracy"] for r in metrics] == [r["accuracy"] for r in sim.history]
    assert "client 0 done after" in again.output()


def test_own_loop_threads_against_an_async_aggregator_process(tmp_path, procs):
    """FedBuff on a real aggregator; two own-loop clients (threads here) feed it to the end."""
    address = f"127.0.0.1:{free_port()}"
    cfg = own_config(tmp_path / "net", "own_async", address=address, min_clients=2)
    cfg = with_changes(
        cfg,
        rounds=4,
        **{
            "data.num_clients": 2,
            "strategy": {"name": "fedbuff", "options": {"buffer_size": 2}},
        },
    )
    config = write_config(tmp_path / "own_async.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    data, parts = client_data(0, 2)
    done: dict[int, int] = {}
    errors: list[BaseException] = []

    def client(cid: int) -> None:
        try:
            with fedloom.connect(
                address, client_id=cid, num_samples=len(parts[cid]), task_id="rt-test"
            ) as fl:
                done[cid] = train(fl, data, parts)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in (0, 1)]
    for t in threads:
        t.start()
    assert server.wait(120) == 0, procs.logs()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(done.values()) >= 4 * 2  # each version took a buffer of 2 updates
    metrics = read_metrics(run_dir(cfg))
    assert metrics[-1]["round"] == 4 and all(math.isfinite(r["accuracy"]) for r in metrics)


def test_the_same_loop_in_a_local_federation_equals_the_simulation(tmp_path):
    cfg = own_config(tmp_path / "local", "own_local")
    fl = LocalFederation.from_config(cfg)
    data, parts = client_data(fl.seed, 4)
    assert train(fl, data, parts) == 9  # 3 rounds x 3 clients
    sim, _ = simulate(cfg, tmp_path / "sim")
    assert torch.equal(fl.result.params, sim.params)
    assert [r["accuracy"] for r in read_metrics(run_dir(cfg))] == [
        r["accuracy"] for r in sim.history
    ]


def local(rounds: int = 2) -> LocalFederation:
    return LocalFederation(
        make_model,
        fedloom.FedAvg(clients_per_round=2),
        num_samples=[10, 20, 30],
        rounds=rounds,
        seed=1,
    )


def test_a_job_refuses_what_does_not_fit_and_sends_nothing():
    fl = local(rounds=1)
    model = make_model()
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7))
    jobs = fl.jobs()
    job = next(jobs)
    assert job.round == 1 and job.version == 0 and job.config == {}
    with pytest.raises(JobError, match=r"1.weight: shape \(7, 784\), expected \(10, 784\)"):
        job.load_into(wrong)
    job.load_into(model)
    state = job.model_state()
    assert state["1.weight"].shape == (10, 784)
    with torch.no_grad():
        model[1].weight[0, 0] = math.nan
    with pytest.raises(JobError, match="NaN"):
        job.upload(model, num_samples=10)
    job.load_into(model)
    with pytest.raises(JobError, match="num_samples"):
        job.upload(model, num_samples=0)
    with pytest.raises(JobError, match="exceeds"):
        job.upload(model, num_samples=10**6)
    with pytest.raises(JobError, match="not finite"):
        job.upload(model, num_samples=1, metrics={"loss": math.inf})
    with pytest.raises(JobError, match=r"1\.weight"):
        job.upload(wrong, num_samples=1)
    assert not job.uploaded
    assert job.upload(state, num_samples=1, metrics={"loss": 0.5})  # a state dict works too
    with pytest.raises(JobError, match="already uploaded"):
        job.upload(model, num_samples=1)
    rest = list(jobs)  # the other client of the round (no upload: skipped); the run ends
    assert len(rest) == 1 and not rest[0].uploaded
    assert fl.result.rounds == 1 and fl.result.history[0]["clients"] == 1


def test_leaving_the_loop_early_stops_the_local_run():
    fl = local(rounds=3)
    for job in fl.jobs():
        job.upload(job.model_state(), num_samples=5)
        break
    assert fl.result is None and not fl._thread.is_alive()


def test_connect_refuses_a_bad_token_and_a_model_of_another_spec(servers):
    spec, _ = fedloom.flatten_module(make_model())
    server = AggregatorServer(spec, task_id="rt-test", tokens={0: "secret", 1: "other"})
    servers.append(server.start())
    with pytest.raises(RefusedError, match="client 0"):
        fedloom.connect(server.address, client_id=0, num_samples=5, task_id="rt-test", token="no")
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10), nn.Linear(10, 10))
    with pytest.raises(JobError, match="unknown tensors"):
        fedloom.connect(
            server.address,
            client_id=0,
            num_samples=5,
            task_id="rt-test",
            token="secret",
            model=wrong,
        )
    with fedloom.connect(
        server.address, client_id=1, num_samples=5, task_id="rt-test", token="other"
    ) as fl:
        assert fl.spec == spec and fl.seed == 0
