"""The bulk data channel beside gRPC: same results, same checks, fallback to gRPC."""

from __future__ import annotations

import socket
import struct

import pytest
import torch
from conftest import make_tiny_task

from fedloom import FedAvg, Federation, ParamSpec, encode
from fedloom.algorithms.base import RoundPlan
from fedloom.errors import WireError
from fedloom.runtime import AggregatorServer, RuntimeClient, TLSConfig, bulk
from fedloom.runtime.security import client_ssl_context

from .conftest import check_in, stub_for
from .test_server_client import tls_experiment


def run_tiny(servers, client_threads, *, rounds=2, use_bulk=True, close_bulk=False, **kw):
    """A 3-round FedAvg over the 6-client tiny task with 6 client threads; (params, clients)."""
    task = make_tiny_task()

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(
            spec, address="127.0.0.1:0", poll_interval=0.02, min_clients=6, **kw
        )
        servers.append(server)
        if close_bulk:  # the port is announced but nothing listens: a firewall, say
            server.bulk.close()
        return server.start()

    fed = Federation(task, FedAvg(fraction=1.0), make, rounds=rounds, seed=0)
    clients = [RuntimeClient(task, fed.backend.address, c, use_bulk=use_bulk) for c in range(6)]
    for c in clients:
        client_threads.start(c)
    result = fed.run()
    fed.backend.finish()
    client_threads.join()
    assert not client_threads.errors, client_threads.errors
    return result.params, clients


def test_bulk_and_grpc_transfers_give_the_simulations_parameters(servers, client_threads):
    task = make_tiny_task()
    sim = Federation(task, FedAvg(fraction=1.0), rounds=2, seed=0).run().params
    via_bulk, bulk_clients = run_tiny(servers, client_threads)
    via_grpc, grpc_clients = run_tiny(servers, client_threads, use_bulk=False)
    assert torch.equal(via_bulk, sim) and torch.equal(via_grpc, sim)
    # 2 rounds: a download and an upload each, all on the channel chosen
    assert [c.transfers for c in bulk_clients] == [{"bulk": 4, "grpc": 0}] * 6
    assert [c.transfers for c in grpc_clients] == [{"bulk": 0, "grpc": 4}] * 6


def test_an_unreachable_bulk_port_falls_back_to_grpc(servers, client_threads):
    task = make_tiny_task()
    sim = Federation(task, FedAvg(fraction=1.0), rounds=2, seed=0).run().params
    params, clients = run_tiny(servers, client_threads, close_bulk=True)
    assert torch.equal(params, sim)
    assert all(c.transfers["grpc"] == 4 and c.transfers["bulk"] == 0 for c in clients)


def test_server_without_bulk_announces_no_port(servers):
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0", bulk=False)
    servers.append(server.start())
    with stub_for(server.address) as stub:
        assert check_in(stub, 0).bulk_port == 0


# -- the bulk protocol checks what gRPC checks ---------------------------------------------------
@pytest.fixture
def one_round(servers):
    """An aggregator with tokens, client 0 checked in and handed round 1."""
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(
        spec, address="127.0.0.1:0", tokens={0: "s3cret", 1: "other"}, max_update_bytes=4096
    )
    servers.append(server.start())
    params = torch.arange(spec.numel, dtype=torch.float32)
    with stub_for(server.address) as stub:
        reply = check_in(stub, 0, token="s3cret")
        server.distribute(1, RoundPlan([0]), params)
        poll = pb_poll(stub)
    assert reply.bulk_port == server.bulk.port and poll.round == 1
    return server, spec, params


def restart_round(server, params) -> None:
    server.distribute(1, RoundPlan([0]), params)
    with stub_for(server.address) as stub:
        pb_poll(stub)


def pb_poll(stub):
    from fedloom.runtime.proto import fedloom_pb2 as pb

    ins = stub.Poll(pb.PollRequest(task_id="fedloom", client_id="0", token="s3cret"), timeout=10)
    assert ins.kind == pb.Instruction.TRAIN
    return ins


def ask(server, header: dict, payload: bytes | None = None) -> tuple[dict, bytes]:
    """Send one bulk request; (final reply header, bytes that followed it)."""
    with socket.create_connection(("127.0.0.1", server.bulk.port), timeout=10) as sock:
        bulk.send_header(sock, header)
        reply = bulk.recv_header(sock)
        if reply.get("go") and payload is not None:
            sock.sendall(payload)
            reply = bulk.recv_header(sock)
        body = bulk.recv_exact(sock, reply["total_bytes"]) if "total_bytes" in reply else b""
    return reply, bytes(body)


def request(kind: str, **changes) -> dict:
    header = {"op": kind, "task_id": "fedloom", "client_id": "0", "token": "s3cret"}
    return header | {"round": 1, "version": 0} | changes


def test_bulk_download_serves_the_current_model_and_checks_everything(one_round):
    server, spec, params = one_round
    reply, body = ask(server, request("download"))
    assert reply["ok"] and reply["round"] == 1
    assert body == encode(params, spec, {"round": 1, "version": 0})
    for changes, code in [
        ({"token": "wrong"}, "UNAUTHENTICATED"),
        ({"client_id": "7"}, "PERMISSION_DENIED"),  # not in the token table
        ({"client_id": "1", "token": "other"}, "NOT_FOUND"),  # never checked in
        ({"task_id": "another"}, "PERMISSION_DENIED"),
        ({"client_id": "zero"}, "INVALID_ARGUMENT"),
        ({"round": 2, "version": 1}, "FAILED_PRECONDITION"),  # not current
        ({"op": "delete"}, "INVALID_ARGUMENT"),
        ({"round": "one"}, "INVALID_ARGUMENT"),
    ]:
        reply, body = ask(server, request("download", **changes))
        assert not reply["ok"] and reply["code"] == code, (changes, reply)
        assert body == b""


def test_bulk_upload_is_checked_and_counted_like_a_grpc_one(one_round):
    server, spec, params = one_round
    good = encode(params + 1, spec, {"round": 1})
    bad = encode(torch.full_like(params, float("nan")), spec, {"round": 1})
    # too large: refused from the header, before any buffer is made or byte is read
    reply, _ = ask(server, request("upload", total_bytes=1 << 30, num_samples=3), b"")
    assert reply["ok"] and not reply["accepted"] and "limit" in reply["reason"]
    restart_round(server, params)  # a refusal ends the client's round: hand it the round again
    reply, _ = ask(server, request("upload", total_bytes=len(bad), num_samples=3), bad)
    assert not reply["accepted"] and ("NaN" in reply["reason"] or "finite" in reply["reason"])
    restart_round(server, params)
    reply, _ = ask(server, request("upload", total_bytes=len(good), num_samples=3), good)
    assert reply == {"ok": True, "accepted": True, "reason": ""}
    (update,) = server.collect()  # the round's one update, as the aggregation gets it
    assert update.num_samples == 3 and torch.equal(update.params, params + 1)
    reply, _ = ask(server, request("upload", total_bytes=len(good), num_samples=3), good)
    assert not reply["accepted"] and "duplicate" in reply["reason"]  # one update per round
    reply, _ = ask(server, request("upload", token="x", total_bytes=len(good)), good)
    assert reply["code"] == "UNAUTHENTICATED"


def test_a_malformed_or_huge_bulk_header_only_drops_that_connection(one_round):
    server, *_ = one_round
    for raw in (
        struct.pack(">I", 5) + b"{nope",  # not JSON
        struct.pack(">I", 2) + b"[]",  # not an object
        struct.pack(">I", 1 << 30),  # announces a 1 GiB header
    ):
        with socket.create_connection(("127.0.0.1", server.bulk.port), timeout=10) as sock:
            sock.sendall(raw)
            assert sock.recv(16) == b""  # closed without an answer
    reply, _ = ask(server, request("download"))  # and the channel still serves
    assert reply["ok"]


def test_header_limits_on_the_sending_side():
    a, b = socket.socketpair()
    with a, b, pytest.raises(WireError, match="exceeds"):
        bulk.send_header(a, {"x": "y" * (bulk.HEADER_MAX + 1)})


def test_mutual_tls_covers_the_bulk_channel(tmp_path, servers, client_threads, certs):
    exp, server = tls_experiment(tmp_path, servers, certs, "bulk-mtls", mutual=True)
    assert server.bulk.ssl_context is not None
    with_cert = TLSConfig(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    clients = [
        RuntimeClient(exp.task, server.address, c, task_id="rt-test", tls=with_cert) for c in (0, 1)
    ]
    for c in clients:
        client_threads.start(c)
    exp.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors
    assert all(c.transfers == {"bulk": 2, "grpc": 0} for c in clients)
    # a plain socket, or TLS without a client certificate, gets nothing through
    ctx = client_ssl_context(TLSConfig(ca=certs.ca))
    for context in (None, ctx):
        with pytest.raises((OSError, WireError)):  # noqa: PT012 - refused at connect or header
            sock = bulk.connect("127.0.0.1", server.bulk.port, context, "localhost", 10)
            with sock:
                bulk.send_header(sock, request("download"))
                bulk.recv_header(sock)
