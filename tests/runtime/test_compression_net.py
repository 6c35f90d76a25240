"""``[compression]`` over the network: packets on the wire, the simulation's numbers bit for bit,
the bytes the transports carried, and corrupt packets refused while the run goes on."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import grpc
import pytest
import torch
from conftest import make_tiny_task

from fedloom import ConfigError, Experiment, FedAvg, Federation, ParamSpec
from fedloom.federation.async_loop import AsyncFederation
from fedloom.compression.link import STATE_KEY, Compression, codec_state
from fedloom.compression.packet import overhead
from fedloom.runtime import AggregatorServer, RuntimeClient, bulk
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.simulation.engine import InProcessClients
from fedloom.strategies import FedBuff, Scaffold

from .conftest import (
    base_config,
    check_in,
    download_bytes,
    free_port,
    poll_for_train,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    stub_for,
    upload,
    with_changes,
    write_config,
)
from .test_processes import start_clients

BYTES = ("bytes_up", "bytes_down")


def chains(up: tuple[str, ...], down: tuple[str, ...]) -> Compression:
    return Compression(up, down, seed=0)


def simulation(up, down, strategy=None, rounds: int = 2):
    task = make_tiny_task()
    backend = InProcessClients(task, 0, compression=chains(up, down))
    fed = Federation(task, strategy or FedAvg(fraction=1.0), backend, rounds=rounds, seed=0)
    return fed.run(), backend


def network(servers, client_threads, up, down, strategy=None, rounds=2, client=RuntimeClient, **kw):
    """The same run with an aggregator and six client threads; (result, clients, server)."""
    task = make_tiny_task()

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(
            spec,
            address="127.0.0.1:0",
            poll_interval=0.02,
            min_clients=6,
            compression=chains(up, down),
            mode="async" if isinstance(strategy, FedBuff) else "sync",
        )
        servers.append(server)
        return server.start()

    loop = AsyncFederation if isinstance(strategy, FedBuff) else Federation
    fed = loop(task, strategy or FedAvg(fraction=1.0), make, rounds=rounds, seed=0)
    server = fed.backend
    clients = [client(task, server.address, c, compression=chains(up, down), **kw) for c in range(6)]
    for c in clients:
        client_threads.start(c)
    result = fed.run()
    server.finish()
    client_threads.join(60)
    assert not client_threads.errors, client_threads.errors
    return result, clients, server


@pytest.mark.parametrize(
    "up,down,use_bulk",
    [
        (("q8",), (), True),
        (("topk:0.1", "q8", "zstd"), ("fp16",), False),
        (("randk:0.2", "zstd"), ("bf16", "zstd"), True),
        ((), ("q8",), False),
    ],
)
def test_a_compressed_run_over_the_network_equals_the_simulation(
    servers, client_threads, up, down, use_bulk
) -> None:
    sim, backend = simulation(up, down)
    net, clients, _ = network(servers, client_threads, up, down, use_bulk=use_bulk)
    assert torch.equal(net.params, sim.params)
    assert [{k: r[k] for k in BYTES} for r in net.history] == [
        {k: r[k] for k in BYTES} for r in sim.history
    ]
    channel = "bulk" if use_bulk else "grpc"
    assert all(c.transfers[channel] == 4 for c in clients)  # 2 rounds, down and up each
    # each client's error-feedback residual is the simulation's, bit for bit
    for c in clients:
        state = c.engine.states.get(c.client_id, {})
        assert (STATE_KEY in state) == bool(up and up[0][:4] in ("topk", "rand"))
        if STATE_KEY in state:
            mine = codec_state(state[STATE_KEY]).state_dict()
            theirs = codec_state(backend.states[c.client_id][STATE_KEY]).state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_strategy_tensors_travel_in_the_packets_both_ways(servers, client_threads) -> None:
    """SCAFFOLD's control variates: plan tensors down, each client's change up, lossless."""
    up, down = ("topk:0.2", "q8", "zstd"), ("fp16", "zstd")
    sim, _ = simulation(up, down, Scaffold(fraction=1.0))
    net, _, _ = network(servers, client_threads, up, down, Scaffold(fraction=1.0))
    assert torch.equal(net.params, sim.params)
    assert [r["bytes_up"] for r in net.history] == [r["bytes_up"] for r in sim.history]
    assert [r["bytes_down"] for r in net.history] == [r["bytes_down"] for r in sim.history]


def test_async_rounds_decode_against_the_version_trained_on(servers, client_threads) -> None:
    strategy = FedBuff(buffer_size=3, max_staleness=4)
    net, _, server = network(servers, client_threads, ("q8", "zstd"), ("fp16",), strategy)
    assert torch.isfinite(net.params).all() and len(net.history) == 2
    assert all(r["bytes_up"] > 0 and r["clients"] >= 3 for r in net.history)
    assert not server.rejections


# -- bytes at the transport: what the sockets and the gRPC stream carried ------------------
class CountingSocket:
    """A bulk socket that keeps a copy of every byte it sends and receives (a real socket
    underneath; the copies are read back by the test)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent, self.received = bytearray(), bytearray()

    def sendall(self, data: Any) -> None:
        self._sock.sendall(data)
        self.sent += memoryview(data).cast("B")

    def recv_into(self, view: memoryview, n: int = 0) -> int:
        got = self._sock.recv_into(view, n)
        self.received += view[:got]
        return got

    def __enter__(self) -> CountingSocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Messages(grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """The serialised messages of gRPC ``Download`` (received) and ``Upload`` (sent)."""

    def __init__(self) -> None:
        self.down: list[bytes] = []
        self.up: list[bytes] = []

    def intercept_unary_stream(self, continuation, details, request):
        stream = continuation(details, request)
        if not details.method.endswith("/Download"):
            return stream
        return self._kept(stream, self.down)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(details, self._kept(request_iterator, self.up))

    @staticmethod
    def _kept(messages, into: list[bytes]):
        for msg in messages:
            into.append(bytes(msg))
            yield msg


class CountingClient(RuntimeClient):
    """A RuntimeClient whose transfers are recorded where they leave and enter the process."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.messages = Messages()
        self.sockets: list[CountingSocket] = []  # one per bulk transfer
        connect = self._bulk._connect

        def counted() -> Any:
            self.sockets.append(CountingSocket(connect()))
            return self.sockets[-1]

        self._bulk._connect = counted  # type: ignore[method-assign]

    def _channel(self) -> Any:
        return grpc.intercept_channel(super()._channel(), self.messages)


def bulk_body(stream: bytes) -> tuple[int, int]:
    """(payload, framing) of one bulk message stream: a 4-byte length, that many bytes of JSON
    header announcing ``total_bytes``, then the payload (:mod:`fedloom.runtime.bulk`)."""
    n = int.from_bytes(stream[:4], "big")
    total = int(json.loads(stream[4 : 4 + n])["total_bytes"])
    assert len(stream) >= 4 + n + total
    return total, 4 + n


def grpc_body(messages: list[bytes]) -> tuple[int, int]:
    """(payload, framing) of Chunk messages, as protobuf parses them: the data field's bytes,
    and the rest (header fields on the first chunk, a tag and a length on every one)."""
    data = sum(len(pb.Chunk.FromString(m).data) for m in messages)
    return data, sum(len(m) for m in messages) - data


@pytest.mark.parametrize("use_bulk", [True, False])
def test_bytes_in_the_metrics_are_what_the_transport_carried(
    servers, client_threads, use_bulk
) -> None:
    """Every byte each bulk socket moved, or every Chunk message gRPC moved, at the client;
    less the framing the protocol documents, computed from what was sent, it is exactly the
    run's bytes_up and bytes_down."""
    up, down = ("topk:0.1", "q8", "zstd"), ("fp16", "zstd")
    net, clients, _ = network(
        servers, client_threads, up, down, client=CountingClient, use_bulk=use_bulk
    )
    bytes_up = sum(r["bytes_up"] for r in net.history)
    bytes_down = sum(r["bytes_down"] for r in net.history)
    moved = {"up": [0, 0], "down": [0, 0]}  # payload, framing
    for c in clients:
        if use_bulk:
            assert len(c.sockets) == 4  # down, up, down, up: one connection each
            for s in c.sockets[0::2]:
                body, frame = bulk_body(bytes(s.received))
                assert len(s.received) == frame + body  # nothing but the header and packet
                moved["down"][0] += body
                moved["down"][1] += frame + len(s.sent)  # the request header
            for s in c.sockets[1::2]:
                body, frame = bulk_body(bytes(s.sent))
                assert len(s.sent) == frame + body
                moved["up"][0] += body
                moved["up"][1] += frame + len(s.received)  # the go-ahead and the answer
        else:
            assert not c.sockets
            for way, messages in (("down", c.messages.down), ("up", c.messages.up)):
                body, frame = grpc_body(messages)
                moved[way][0] += body
                moved[way][1] += frame
    assert moved["up"][0] == bytes_up and moved["down"][0] == bytes_down
    print(
        f"\n{'bulk' if use_bulk else 'gRPC'}: bytes_up {bytes_up} (+{moved['up'][1]} framing), "
        f"bytes_down {bytes_down} (+{moved['down'][1]} framing)"
    )
