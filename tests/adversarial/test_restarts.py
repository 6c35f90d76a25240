"""Clients that die: killed and restarted at once (the work is re-sent, the model is the
unattacked one), or killed for good under a quorum of every client (rounds are skipped by
the ``short_round`` policy and the run still finishes)."""

from __future__ import annotations

import signal

import torch
from runtime.conftest import (
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    wait_until,
    with_changes,
    write_config,
)

from .conftest import TRACEBACK, small_config, start_clients

# local training long enough (about 0.3-0.5 s a round) that a kill sent when the aggregator
# logs the client's download lands while it trains (the log is watched every 10 ms)
EPOCHS = 12


def kill_when_downloading(server, client, cid: int, rnd: int) -> None:
    wait_until(
        lambda: f"client {cid} downloads round {rnd}" in server.output(),
        120,
        f"client {cid}'s download of round {rnd}",
        step=0.01,
    )
    client.popen.send_signal(signal.SIGKILL)
    assert client.wait(10) == -signal.SIGKILL
    assert f"round {rnd} trained" not in client.output(), "killed too late: after training"


def test_a_client_killed_mid_round_and_restarted_gets_its_work_again(tmp_path, procs):
    address = f"127.0.0.1:{free_port()}"
    cfg = small_config(tmp_path / "net", "restarted", clients=3, rounds=2)  # no tokens
    cfg["train"]["local_epochs"] = EPOCHS
    config = write_config(tmp_path / "restarted.json", cfg)
    server = procs.fedloom("aggregator", "-v", "server", str(config), "--address", address)
    clients = start_clients(procs, config, address, range(3))

    kill_when_downloading(server, clients[1], 1, 1)
    again = procs.fedloom(
        "client 1 (restarted)", "client", str(config), "--server", address, "--client-id", "1"
    )
    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process

    assert server.wait(120) == 0, procs.logs()
    for c in (clients[0], clients[2], again):
        assert c.wait(60) == 0, procs.logs()
    directory = run_dir(cfg)
    assert torch.equal(saved_params(directory, spec), sim.params)
    metrics = read_metrics(directory)
    assert [(r["round"], r["clients"], r["rejected"]) for r in metrics] == [(1, 3, 0), (2, 3, 0)]
    assert [r["accuracy"] for r in metrics] == [r["accuracy"] for r in sim.history]
    out = server.output()
    assert "client 1 checked in again (restarted?): its round's work is re-sent" in out
    assert "round 1 trained" in again.output()  # the restarted process did round 1's work
    assert "unauthenticated run: whoever reaches this server may join" in out  # no tokens
    assert TRACEBACK not in out


def test_a_client_killed_for_good_under_full_quorum_skips_rounds_and_the_run_ends(tmp_path, procs):
    """quorum = every client, short_round = skip: client 2 dies in round 2; round 2 is short
    once it is dropped (heartbeat_timeout), round 3 once round_timeout passes without a
    quorum of live clients. Both are skipped, so the model is round 1's: the simulation of
    one round, bit for bit."""
    address = f"127.0.0.1:{free_port()}"
    runtime = dict(quorum=3, short_round="skip", heartbeat_timeout=1.5, round_timeout=4.0)
    cfg = small_config(tmp_path / "net", "quorum", clients=3, rounds=3, **runtime)
    cfg["train"]["local_epochs"] = EPOCHS
    config = write_config(tmp_path / "quorum.json", cfg)
    server = procs.fedloom("aggregator", "-v", "server", str(config), "--address", address)
    clients = start_clients(procs, config, address, range(3))

    kill_when_downloading(server, clients[2], 2, 2)
    sim, spec = simulate(with_changes(cfg, rounds=1), tmp_path / "sim")

    assert server.wait(120) == 0, procs.logs()
    for c in (clients[0], clients[1]):
        assert c.wait(60) == 0, procs.logs()
    directory = run_dir(cfg)
    metrics = read_metrics(directory)
    assert [(r["round"], r["clients"], "skipped" in r) for r in metrics] == [
        (1, 3, False),
        (2, 0, True),
        (3, 0, True),
    ], metrics
    assert "2 of 3 clients returned a valid update; the quorum is 3" in metrics[1]["skipped"]
    assert "2 live clients for 4 s; the quorum is 3" in metrics[2]["skipped"]
    assert torch.equal(saved_params(directory, spec), sim.params)
    out = server.output()
    assert "client 2 silent for" in out and "round skipped, the model is unchanged" in out
    assert TRACEBACK not in out
