"""``[compression]`` over the network: packets on the wire, the simulation's numbers bit for bit,
the bytes the transports carried, and corrupt packets refused while the run goes on."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
from typing import Any

import grpc
import pytest
import torch
from conftest import make_tiny_task

from fedloom import (
    ConfigError,
    Experiment,
    FedAvg,
    Federation,
    ParamSpec,
    decode,
    encode,
    load_checkpoint,
)
from fedloom.algorithms.base import RoundPlan
from fedloom.compression import CodecState, Encoded
from fedloom.compression.link import STATE_KEY, Compression, codec_state
from fedloom.compression.packet import pack
from fedloom.federation.async_loop import AsyncFederation
from fedloom.runtime import AggregatorServer, RuntimeClient
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
    wait_until,
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
    address = server.address
    clients = [client(task, address, c, compression=chains(up, down), **kw) for c in range(6)]
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


# -- real processes: `fedloom server` and `fedloom client` --------------------------------------
@pytest.mark.parametrize(
    "up,down",
    [(["q8"], []), (["topk:0.1", "q8", "zstd"], ["fp16", "zstd"])],
    ids=["q8", "topk+q8+zstd"],
)
def test_a_compressed_sync_run_over_processes_equals_the_simulation(tmp_path, procs, up, down):
    address = f"127.0.0.1:{free_port()}"
    cfg = base_config(tmp_path / "net", "packed", address=address, min_clients=4)
    cfg["compression"] = {"up": up, "down": down}
    config = write_config(tmp_path / "packed.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    clients = start_clients(procs, config, address, range(4))

    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process

    assert server.wait(180) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
    keys = ("round", "clients", "rejected", "accuracy", "bytes_up", "bytes_down")
    metrics = read_metrics(run_dir(cfg))
    assert [{k: r[k] for k in keys} for r in metrics] == [
        {k: r[k] for k in keys} for r in sim.history
    ]
    plain = 3 * (4 * spec.numel)  # three float32 models a round, without the wire headers
    print(
        f"\n{up} / {down}: bytes_up {[r['bytes_up'] for r in metrics]}, bytes_down "
        f"{[r['bytes_down'] for r in metrics]}; float32 models: {plain} a round each way"
    )
    assert all(r["bytes_up"] < plain / 3.5 for r in metrics)


# -- corrupt packets sent to a real aggregator --------------------------------------------------
def corruptions(comp: Compression, rnd: int, model: torch.Tensor, spec: ParamSpec):
    """(name, bytes) of uploads the aggregator's up chain must refuse, from a valid packet."""
    trained = model + 0.01
    good = comp.pack_update(rnd, 5, trained, model, CodecState())
    enc = comp.encode_update(rnd, 5, trained, model, CodecState())
    other = Compression(("topk:0.5", "q8", "zstd"), (), 0)
    named = good[:4] + bytes([1]) + good[5:] + bytes([3]) + b"a b" + (0).to_bytes(4, "little")
    return [
        ("empty", b""),
        ("truncated", good[:-7]),
        ("trailing byte", good + b"\0"),
        ("wrong magic", b"XXXX" + good[4:]),
        ("the plain wire format", encode(trained, spec)),
        ("another chain", other.pack_update(rnd, 5, trained, model, CodecState())),
        ("17 tensors", good[:4] + bytes([17]) + good[5:]),
        ("model length past the end", good[:5] + (len(good)).to_bytes(4, "little") + good[9:]),
        ("a bad tensor name", named),
        ("n of another model", pack(Encoded({**enc.header, "n": spec.numel + 1}, enc.payload)
                                    .to_bytes(), {})),
        ("k of another fraction", pack(Encoded(_stage(enc.header, 0, k=1), enc.payload)
                                       .to_bytes(), {})),
        ("random bytes", random.Random(rnd).randbytes(len(good))),
    ]


def _stage(header: dict[str, Any], i: int, **change: Any) -> dict[str, Any]:
    stages = [dict(s) for s in header["stages"]]
    stages[i].update(change)
    return {**header, "stages": stages}


def test_corrupt_packets_are_refused_counted_and_the_run_finishes(servers, client_threads):
    """Client 5 uploads a different corruption of a valid packet each round; clients 0-4
    train honestly. Every bad packet is refused as malformed and the run completes."""
    up = ("topk:0.2", "q8", "zstd")
    task = make_tiny_task()
    spec = ParamSpec.from_module(task.build_model())
    cases = corruptions(chains(up, ()), 1, torch.zeros(spec.numel), spec)
    sent: list[tuple[str, pb.UploadReply]] = []

    def rogue(address: str) -> None:
        comp = chains(up, ())
        with stub_for(address) as stub:
            check_in(stub, 5, samples=1)
            for i in range(len(cases)):
                ins = poll_for_train(stub, 5)
                model = decode(download_bytes(stub, 5, ins, spec), spec)[0]
                name, data = corruptions(comp, ins.round, model, spec)[i]
                reply = upload(stub, 5, data, round=ins.round, version=ins.version, samples=1)
                sent.append((name, reply))

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(
            spec, address="127.0.0.1:0", poll_interval=0.02, min_clients=6,
            compression=chains(up, ()),
        )  # fmt: skip
        servers.append(server)
        return server.start()

    fed = Federation(task, FedAvg(fraction=1.0), make, rounds=len(cases), seed=0)
    server = fed.backend
    for cid in range(5):
        client_threads.start(RuntimeClient(task, server.address, cid, compression=chains(up, ())))
    bad = threading.Thread(target=rogue, args=(server.address,), daemon=True)
    bad.start()
    result = fed.run()
    server.finish()
    bad.join(30)
    client_threads.join(60)
    assert not client_threads.errors, client_threads.errors
    assert [name for name, _ in sent] == [name for name, _ in cases]
    assert not any(reply.accepted for _, reply in sent), [(n, r.reason) for n, r in sent]
    assert [(r["clients"], r["rejected"]) for r in result.history] == [(5, 1)] * len(cases)
    assert server.tally.total["malformed"] == len(cases)
    reasons = {n: r.reason for n, r in sent}
    assert "chain" in reasons["another chain"] and "magic" in reasons["wrong magic"]
    assert torch.isfinite(result.params).all()


def test_the_network_refuses_what_it_cannot_compress_naming_the_keys(tmp_path) -> None:
    from fedloom.deploy.roles import aggregator

    cfg = base_config(tmp_path, "refused")
    cfg["compression"] = {"up": ["q8"]}
    secagg = with_changes(cfg, **{"runtime.secagg": {"num_shares": 3}})
    with pytest.raises(ConfigError, match=r"compression\.up = \['q8'\] with runtime\.secagg"):
        Experiment.from_config(secagg, backend=aggregator("127.0.0.1:0"))
    tree = with_changes(cfg)
    tree["topology"] = {
        "nodes": [
            {"name": "root", "address": f"127.0.0.1:{free_port()}"},
            {"name": "a", "address": f"127.0.0.1:{free_port()}", "clients": "0-1"},
            {"name": "b", "address": f"127.0.0.1:{free_port()}", "clients": "2-3"},
        ],
        "edges": [["a", "root"], ["b", "root"]],
    }
    with pytest.raises(ConfigError, match=r"compression\.up with a \[topology\]"):
        Experiment.from_config(tree, backend=aggregator("127.0.0.1:0"))


def test_a_side_without_the_chain_is_told_so(servers, client_threads) -> None:
    """A client whose config lacks compression.down stops with one line saying so; an
    aggregator without compression.up refuses a packet, naming the key."""
    task = make_tiny_task()
    spec = ParamSpec.from_module(task.build_model())
    server = AggregatorServer(
        spec, address="127.0.0.1:0", poll_interval=0.02, compression=chains((), ("fp16",))
    )
    servers.append(server.start())
    server.distribute(1, RoundPlan([0, 1]), torch.zeros(spec.numel))
    client_threads.start(RuntimeClient(task, server.address, 0, retry_for=5))
    client_threads.join(30)
    assert "has no compression.down" in str(client_threads.errors[0])
    with stub_for(server.address) as stub:
        check_in(stub, 1)
        ins = poll_for_train(stub, 1)
        packet = chains(("q8",), ()).pack_update(1, 1, torch.ones(spec.numel),
                                                 torch.zeros(spec.numel), CodecState())
        reply = upload(stub, 1, packet, round=ins.round, version=ins.version)
    assert not reply.accepted and "has no compression.up" in reply.reason


def test_an_own_loop_federation_refuses_compression(tmp_path) -> None:
    from fedloom import LocalFederation

    cfg = base_config(tmp_path, "own")
    cfg["compression"] = {"down": ["fp16"]}
    with pytest.raises(ConfigError, match=r"compression\.down with a LocalFederation"):
        LocalFederation.from_config(cfg)


def test_error_feedback_survives_an_aggregator_killed_and_resumed(tmp_path, procs):
    """kill -9 the aggregator once round 2's checkpoint exists and resume it: the client
    processes keep their residuals (in their engines' state) across the check-in again, and
    the run equals the simulation (it would not without them: top-k keeps 10% a round)."""
    address = f"127.0.0.1:{free_port()}"
    runtime = {"address": address, "min_clients": 2, "retry_for": 120.0}
    cfg = base_config(tmp_path / "net", "packed-resumed", **runtime)
    cfg = with_changes(
        cfg,
        rounds=5,
        **{"data.num_clients": 2, "strategy.clients_per_round": 2, "model.name": "mlp"},
    )
    cfg["compression"] = {"up": ["topk:0.1", "q8"]}
    config = write_config(tmp_path / "packed-resumed.json", cfg)
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
    assert 2 <= checkpoint_round() < cfg["rounds"], "the run ended before the kill"
    second = procs.fedloom(
        "aggregator (resumed)", "server", str(config), "--address", address, "--resume"
    )
    sim, spec = simulate(cfg, tmp_path / "sim")  # meanwhile, in this process
    assert second.wait(180) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()
    assert [r["round"] for r in read_metrics(directory)] == [1, 2, 3, 4, 5]
    assert torch.equal(saved_params(directory, spec), sim.params)
