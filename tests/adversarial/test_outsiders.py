"""Outsiders (no valid token) attack a run: the run finishes with the unattacked model.

One run of ``fedloom server`` with 3 honest client processes and tokens. Before the clients
check in, 300 gRPC Upload streams without a token are opened that never send a byte and are
held open until the run is over; when round 2 starts, 300 more (held ``HOLD_S``); all along,
70 slowloris connections on the bulk port (64 slots) trickle their header a byte a second.
Nothing an outsider does may change a bit of the model: it must equal the in-process
simulation of the same config.
"""

from __future__ import annotations

import threading
from collections import Counter

import torch
from chaos_attacks import (
    BULK_HEADER_UNFINISHED,
    SlowlorisReport,
    StreamsReport,
    held_upload_streams,
    identity,
    slowloris,
)
from runtime.conftest import (
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    wait_until,
    write_config,
)

from .conftest import TRACEBACK, refused_total, small_config, start_clients, tokens

STREAMS, HOLD_S = 300, 3.0
HEADER_TIMEOUT = 5.0  # the bulk server's deadline for a connection's header (bulk.py)


def test_outsider_streams_and_bulk_slowloris_leave_the_model_bit_identical(tmp_path, procs):
    address, bulk_port = f"127.0.0.1:{free_port()}", free_port()
    cfg = small_config(
        tmp_path / "net", "outsiders", clients=3, rounds=3, tokens=tokens(3), bulk_port=bulk_port
    )
    config = write_config(tmp_path / "outsiders.json", cfg)
    task = cfg["runtime"]["task_id"]
    server = procs.fedloom("aggregator", "-v", "server", str(config), "--address", address)
    wait_until(lambda: "listening on" in server.output(), 60, "the aggregator to listen")

    stop = threading.Event()
    loris, held, mid = SlowlorisReport(), StreamsReport(), StreamsReport()
    no_token = [identity(task, "0")]  # a real client id, no token at all

    def wave_at_round_2() -> None:
        at_2 = lambda: stop.is_set() or "downloads round 2" in server.output()  # noqa: E731
        reached = wait_until(at_2, 120, "r2")
        if reached and not stop.is_set():
            held_upload_streams(
                address, STREAMS, HOLD_S, identities=no_token, stop=stop, report=mid
            )

    def attack(target, *args, **kwargs) -> threading.Thread:
        t = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
        t.start()
        return t

    attackers = []
    try:
        attackers.append(
            attack(
                slowloris,
                "127.0.0.1",
                bulk_port,
                70,
                150,
                partial=BULK_HEADER_UNFINISHED,
                trickle_s=1.0,
                stop=stop,
                report=loris,
            )
        )
        wait_until(lambda: loris.opened >= 70, 30, "the slowloris connections")
        attackers.append(
            attack(
                held_upload_streams,
                address,
                STREAMS,
                150,
                identities=no_token,
                stop=stop,
                report=held,
            )
        )
        wait_until(lambda: sum(held.codes.values()) == STREAMS, 30, "answers to the streams")
        # all answered at once, UNAUTHENTICATED, though not a byte was sent and the streams
        # stay open (an aggregator reading a stream before its token would keep a worker
        # thread per stream until the run ends, and the clients would find none free)
        assert held.codes == Counter(UNAUTHENTICATED=STREAMS) and held.slowest_s < 10, held

        clients = start_clients(procs, config, address, range(3))
        attackers.append(attack(wave_at_round_2))
        sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process
        assert server.wait(120) == 0, procs.logs()
        for c in clients.values():
            assert c.wait(60) == 0, procs.logs()
    finally:
        stop.set()
        for t in attackers:
            t.join(HOLD_S + 20)
    assert not any(t.is_alive() for t in attackers)

    # (b) the model and the records are the unattacked run's, bit for bit
    directory = run_dir(cfg)
    assert torch.equal(saved_params(directory, spec), sim.params)
    metrics = read_metrics(directory)
    keys = ("round", "clients", "rejected", "samples", "train_loss", "accuracy", "test_loss")
    assert [{k: r[k] for k in keys} for r in metrics] == [
        {k: r[k] for k in keys} for r in sim.history
    ]

    # the second wave, opened while round 2 ran, was answered at once as well
    assert mid.codes == Counter(UNAUTHENTICATED=STREAMS) and mid.slowest_s < HOLD_S - 0.5, mid

    # the slowloris never held a slot past the header deadline, and the honest clients still
    # moved every model over the bulk port (evicting the slowloris), never falling back
    assert loris.opened >= 70 and loris.closed_by_server >= 70 - 64, loris
    assert loris.longest_s < HEADER_TIMEOUT + 3, loris  # + our 1 s tick, + a loaded machine
    out = server.output()
    downloads = [ln for ln in out.splitlines() if " downloads round " in ln]
    assert len(downloads) == 9 and all(ln.endswith("(bulk)") for ln in downloads), downloads
    for c in clients.values():
        assert "bulk" not in c.output(), c.output()[-2000:]  # "bulk download failed ..."

    # (d) logged once by kind, counted in the records of the rounds they fell in, no traceback
    assert "refused (bad_token): Upload: bad token for client 0" in out
    assert "refused (bulk_dropped)" in out
    assert TRACEBACK not in out
    refused = refused_total(metrics)
    assert set(refused) == {"bad_token", "bulk_dropped"}, refused
    assert metrics[0]["refused"]["bad_token"] == STREAMS, metrics[0]  # the streams held
    assert STREAMS < refused["bad_token"] <= 2 * STREAMS, refused  # + round 2's, if in time
    print(f"slowloris {loris}, refused {dict(refused)}, slowest {held.slowest_s, mid.slowest_s}")
