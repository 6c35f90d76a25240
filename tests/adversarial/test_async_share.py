"""A lazy insider in an asynchronous run: it uploads the model it downloads straight back,
without training, so it could answer many times for each honest update. The aggregator's
share rule (runtime.async_max_share) caps it: of any ``2 x live`` consecutive accepted
updates, a client holds at most ``ceil(async_max_share x 2)`` (its fair share being 2)."""

from __future__ import annotations

import json
import math
import threading
import time

from chaos_attacks import grpc_upload
from runtime.conftest import (
    check_in,
    download_bytes,
    free_port,
    poll_for_train,
    read_metrics,
    run_dir,
    stub_for,
    wait_until,
    write_config,
)

from fedloom import ParamSpec
from fedloom.runtime.proto import fedloom_pb2 as pb

from .conftest import TRACEBACK, small_config, start_clients

LAZY = 3
LAZY_SAMPLES = 777  # no honest client holds this many: a version with it is the lazy one's
VERSIONS = 24


def test_a_lazy_client_gets_at_most_its_bounded_share_of_async_updates(tmp_path, procs):
    address = f"127.0.0.1:{free_port()}"
    cfg = small_config(tmp_path / "net", "lazy", clients=4, rounds=VERSIONS, async_max_share=2.0)
    cfg["strategy"] = {"name": "fedasync"}
    cfg["train"]["local_epochs"] = 2
    config = write_config(tmp_path / "lazy.json", cfg)
    task = cfg["runtime"]["task_id"]
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    wait_until(lambda: "listening on" in server.output(), 60, "the aggregator to listen")
    clients = start_clients(procs, config, address, range(3))

    replies: list[bool] = []  # the aggregator's answer to each lazy upload
    errors: list[BaseException] = []
    stop = threading.Event()

    def lazy() -> None:
        try:
            with stub_for(address) as stub:
                reply = check_in(stub, LAZY, task, samples=LAZY_SAMPLES)
                spec = ParamSpec.from_json(json.loads(reply.spec_json))
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    ins = poll_for_train(stub, LAZY, task, timeout=60)
                    if ins.kind == pb.Instruction.STOP:
                        return
                    model = download_bytes(stub, LAZY, ins, spec, task)
                    out = grpc_upload(
                        address,
                        model,  # straight back, untrained
                        task_id=task,
                        client_id=str(LAZY),
                        token="",
                        round=ins.round,
                        version=ins.version,
                        num_samples=LAZY_SAMPLES,
                    )
                    replies.append(out.kind == "accepted")
        except Exception as e:  # noqa: BLE001 - reported below
            if not stop.is_set():
                errors.append(e)

    attacker = threading.Thread(target=lazy, daemon=True)
    attacker.start()
    try:
        assert server.wait(120) == 0, procs.logs()
        for c in clients.values():
            assert c.wait(60) == 0, procs.logs()
    finally:
        stop.set()
        attacker.join(30)
    assert not attacker.is_alive() and not errors, errors

    metrics = read_metrics(run_dir(cfg))
    assert [r["round"] for r in metrics] == list(range(1, VERSIONS + 1))
    assert all(r["clients"] == 1 for r in metrics), metrics  # FedAsync: one update a version
    who = ["lazy" if r["samples"] == LAZY_SAMPLES else "honest" for r in metrics]
    lazy_total = who.count("lazy")
    assert 0 < lazy_total <= sum(replies), (who, replies)  # it did take part

    # the bound, from the rule: windows of 2 x live accepted updates, live = 4 clients
    live = 4
    window = 2 * live
    limit = max(1, math.ceil(cfg["runtime"]["async_max_share"] * window / live))
    # a window's updates were handed out under the rule only once 2 x live updates exist
    # (before that every client may take work), hence the windows from index `window` on
    counts = [who[s : s + window].count("lazy") for s in range(window, len(who) - window + 1)]
    assert counts and max(counts) <= limit, (limit, counts, who)
    out = server.output()
    assert TRACEBACK not in out
    print(f"lazy {lazy_total} of {len(who)} versions ({sum(replies)} accepted); windows {counts}")
