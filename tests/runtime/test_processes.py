"""Real processes on loopback: ``fedloom server`` and ``fedloom client``, killed and restarted."""

from __future__ import annotations

import signal
import time

import torch

from fedloom import load_checkpoint

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


def start_clients(procs, config, address, ids, **extra_sets):
    sets = [a for k, v in extra_sets.items() for a in ("--set", f"{k}={v}")]
    return {
        i: procs.fedloom(
            f"client {i}", "client", str(config), "--server", address, "--client-id", str(i), *sets
        )
        for i in ids
    }


def test_sync_run_over_processes_equals_the_simulation(tmp_path, procs):
    """An aggregator and 4 client processes; FedAvg on MNIST shards, 3 of 4 clients a round."""
    address = f"127.0.0.1:{free_port()}"
    cfg = base_config(tmp_path / "net", "sync", address=address, min_clients=4)
    config = write_config(tmp_path / "sync.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    clients = start_clients(procs, config, address, range(4))

    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process

    assert server.wait(180) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()
    net = saved_params(run_dir(cfg), spec)
    assert torch.equal(net, sim.params)
    metrics = read_metrics(run_dir(cfg))
    keys = ("round", "clients", "rejected", "samples", "train_loss", "accuracy", "test_loss")
    assert [{k: r[k] for k in keys} for r in metrics] == [
        {k: r[k] for k in keys} for r in sim.history
    ]
    assert [r["clients"] for r in metrics] == [3, 3, 3]
    done = [int(c.output().rsplit("done after ", 1)[1].split()[0]) for c in clients.values()]
    assert sum(done) == 9
    assert "aggregator done: 3 rounds (max_rounds)" in server.output()


def test_a_client_killed_mid_round_is_dropped_and_the_run_finishes(tmp_path, procs):
    """Client 1 trains slowly and is SIGKILLed while training round 1; heartbeat_timeout 1.5 s,
    quorum 1: the aggregator drops it, closes round 1 with client 0 and finishes the run."""
    address = f"127.0.0.1:{free_port()}"
    runtime = {"address": address, "min_clients": 2, "quorum": 1, "heartbeat_timeout": 1.5}
    cfg = base_config(tmp_path / "net", "killed", **runtime)
    cfg = with_changes(cfg, rounds=2, **{"data.num_clients": 2, "strategy.clients_per_round": 2})
    config = write_config(tmp_path / "killed.json", cfg)
    server = procs.fedloom("aggregator", "-v", "server", str(config), "--address", address)
    fast = start_clients(procs, config, address, (0,))[0]
    slow = start_clients(procs, config, address, (1,), **{"train.local_epochs": 5000})[1]

    wait_until(lambda: "client 1 downloads round 1" in server.output(), 120, "the download")
    time.sleep(0.3)  # it is training now (5000 epochs: many seconds), sending heartbeats
    assert slow.popen.poll() is None and "round 1 trained" not in slow.output()
    slow.popen.send_signal(signal.SIGKILL)
    assert slow.wait(10) == -signal.SIGKILL

    directory = run_dir(cfg)
    wait_until(lambda: read_metrics(directory), 60, "round 1's record")
    out = server.output()
    assert "client 1 silent for" in out and "dropped" in out
    assert "round 1: client 1 is gone; going on without it" in out
    first = read_metrics(directory)[0]
    assert (first["round"], first["clients"], first["rejected"]) == (1, 1, 0)
    # planned for two, one update came; the model goes out with its version in the header
    assert 0 < first["bytes_down"] - 2 * first["bytes_up"] <= 2 * 16

    # the run must go on with the client that is left and finish
    finished = wait_until(
        lambda: server.popen.poll() is not None or len(read_metrics(directory)) >= 2,
        20,
        "round 2 with the one client left (min_clients=2 was met at the start)",
    )
    assert finished
    assert server.wait(60) == 0, procs.logs()
    assert fast.wait(60) == 0, procs.logs()
    metrics = read_metrics(directory)
    assert [(r["round"], r["clients"], r["rejected"]) for r in metrics] == [(1, 1, 0), (2, 1, 0)]
    assert 0 < metrics[1]["bytes_down"] - metrics[1]["bytes_up"] <= 16


def test_the_aggregator_killed_and_resumed_finishes_like_an_uninterrupted_run(tmp_path, procs):
    """kill -9 the aggregator once round 2's checkpoint exists; restart it with --resume on the
    same address; the clients reconnect by themselves and the result is the simulation's."""
    address = f"127.0.0.1:{free_port()}"
    runtime = {"address": address, "min_clients": 2, "retry_for": 120.0}
    cfg = base_config(tmp_path / "net", "resumed", **runtime)
    cfg = with_changes(
        cfg,
        rounds=6,
        **{"data.num_clients": 2, "strategy.clients_per_round": 2, "model.name": "mlp"},
    )
    config = write_config(tmp_path / "resumed.json", cfg)
    directory = run_dir(cfg)
    checkpoint = directory / "checkpoint.pt"

    def checkpoint_round() -> int:
        try:
            return int(load_checkpoint(checkpoint)["round"]) if checkpoint.exists() else 0
        except Exception:  # noqa: BLE001 - being replaced right now: look again
            return 0

    first = procs.fedloom("aggregator", "server", str(config), "--address", address)
    clients = start_clients(procs, config, address, range(2))
    wait_until(lambda: checkpoint_round() >= 2, 120, "round 2's checkpoint", step=0.02)
    first.popen.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    resumed_from = checkpoint_round()
    assert 2 <= resumed_from < cfg["rounds"], "the run ended before the kill: make rounds slower"
    assert not (directory / "model.safetensors").exists()
    assert all(c.popen.poll() is None for c in clients.values())  # they wait and retry

    second = procs.fedloom(
        "aggregator (resumed)", "server", str(config), "--address", address, "--resume"
    )
    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process

    assert second.wait(180) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()
    metrics = read_metrics(directory)
    assert [r["round"] for r in metrics] == [1, 2, 3, 4, 5, 6]
    assert [r["clients"] for r in metrics] == [2] * 6
    net = saved_params(directory, spec)
    diff = (net - sim.params).abs().max().item()
    assert torch.equal(net, sim.params), f"resumed run differs from the simulation by {diff}"
    assert [r["accuracy"] for r in metrics] == [r["accuracy"] for r in sim.history]
    logs = "".join(c.output() for c in clients.values())
    assert "checking in" in logs  # at least one client noticed the restart and checked in again
