"""The aggregator and its clients in one process (threads): membership, security, bad updates,
quorum. Raw gRPC stubs stand in for clients where a test needs precise control."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from conftest import make_tiny_task

from fedloom import Callback, Experiment, FedAvg, Federation, ParamSpec, RoundState, encode
from fedloom.algorithms.base import RoundPlan
from fedloom.config import RuntimeConfig
from fedloom.deploy.roles import aggregator
from fedloom.params import TensorSpec
from fedloom.runtime import AggregatorServer, QuorumError, RefusedError, RuntimeClient, TLSConfig
from fedloom.runtime.client import UnreachableError
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.security import client_tls
from fedloom.runtime.transport import iter_chunks

from .conftest import (
    base_config,
    check_in,
    download,
    poll_for_train,
    stub_for,
    upload,
    with_changes,
)


# -- helpers -----------------------------------------------------------------------------------
def tiny_federation(
    servers: list, rounds: int, callbacks=(), short_round: str = "retry", **server_kwargs: Any
):
    """A Federation over the tiny 6-client task whose backend is a started aggregator."""
    task = make_tiny_task()
    server_kwargs.setdefault("heartbeat_timeout", 30.0)

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(spec, address="127.0.0.1:0", poll_interval=0.02, **server_kwargs)
        servers.append(server)
        return server.start()

    fed = Federation(
        task,
        FedAvg(fraction=1.0),
        make,
        rounds=rounds,
        seed=0,
        callbacks=list(callbacks),
        short_round=short_round,
    )
    return fed, fed.backend, task


class Background:
    """Runs ``fn`` in a daemon thread; ``result()`` joins (bounded) and re-raises its error."""

    def __init__(self, fn):
        self.value: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value


def renamed(spec: ParamSpec, old: str, new: str) -> ParamSpec:
    return ParamSpec(
        TensorSpec(new if e.name == old else e.name, e.shape, e.dtype) for e in spec.entries
    )


def reshaped(spec: ParamSpec, name: str, shape: tuple[int, ...]) -> ParamSpec:
    return ParamSpec(
        TensorSpec(e.name, shape if e.name == name else e.shape, e.dtype) for e in spec.entries
    )


def code_of(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


# -- membership ----------------------------------------------------------------------------------
def test_a_repeated_check_in_is_recognised_and_counted_once(servers):
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0", min_clients=2, seed=7)
    servers.append(server.start())
    with stub_for(server.address) as stub:
        first = check_in(stub, 3)
        again = check_in(stub, 3)
        assert first.accepted and not first.duplicate and first.seed == 7
        assert again.accepted and again.duplicate
        assert list(server.members) == [3]
        assert not check_in(stub, 1).duplicate
    assert len(server.members) == 2
    assert server.available_clients(1) == [1, 3]  # min_clients reached: no wait


def test_min_clients_gates_the_start_only_not_every_round(servers):
    """Once the run has started, a dropped client must not stall the next round until
    min_clients members are back: the round goes on with the live members."""
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0", min_clients=2, heartbeat_timeout=0.5)
    servers.append(server.start())
    with stub_for(server.address) as stub:
        check_in(stub, 0)
        check_in(stub, 1)
        assert server.available_clients(1) == [0, 1]
        server.distribute(1, RoundPlan([0, 1]), torch.zeros(spec.numel))
        keep_alive = pb.PollRequest(task_id="fedloom", client_id="0", busy=True)
        for _ in range(8):  # 0.8 s: client 0 keeps polling, client 1 falls silent
            stub.Poll(keep_alive, timeout=10)
            time.sleep(0.1)
        nxt = Background(lambda: server.available_clients(2))
        for _ in range(30):  # up to 3 s
            stub.Poll(keep_alive, timeout=10)
            nxt.thread.join(0.1)
            if not nxt.thread.is_alive():
                break
        members = sorted(server.members)
        blocked = nxt.thread.is_alive()
        if blocked:  # release it: a second member satisfies min_clients again
            check_in(stub, 1)
        result = nxt.result(timeout=5)
    assert members == [0]
    assert not blocked, (
        "available_clients(2) still blocked 3 s after client 1 was dropped: min_clients=2 "
        "is applied to every round, not only to the start"
    )
    assert result == [0]


def test_a_client_joining_late_is_sampled_from_a_later_round(servers, client_threads):
    """min_clients=2: clients 0 and 1 start the run; client 2 checks in while round 1 trains."""
    late_rounds: list[int] = []
    clients: dict[int, RuntimeClient] = {}

    class JoinLate(Callback):
        def on_state(self, fed, state, rnd):
            if state is RoundState.TRAIN and rnd == 1:
                assert sorted(fed.plan.clients) == [0, 1]
                client_threads.start(clients[2])

        def on_round_end(self, fed, record):
            if record["round"] == 1:  # round 2 must see the late client: wait for its check-in
                deadline = time.monotonic() + 20
                while 2 not in fed.backend.members and time.monotonic() < deadline:
                    time.sleep(0.02)

    fed, server, task = tiny_federation(servers, rounds=3, callbacks=[JoinLate()], min_clients=2)
    for cid in (0, 1):
        clients[cid] = RuntimeClient(task, server.address, cid)
    clients[2] = RuntimeClient(task, server.address, 2, on_round=lambda r, m: late_rounds.append(r))
    client_threads.start(clients[0])
    client_threads.start(clients[1])
    result = fed.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors
    assert [r["clients"] for r in result.history] == [2, 3, 3]
    assert late_rounds == [2, 3]
    assert clients[2].rounds_done == 2 and clients[0].rounds_done == 3
    assert server.members[2].joined_round == 2


# -- security: tokens ----------------------------------------------------------------------------
def test_tokens_refuse_bad_and_unknown_clients_and_admit_good_ones(
    tmp_path, servers, client_threads
):
    tokens = {"0": "secret0", "1": "secret1"}
    cfg = base_config(tmp_path, "tokens", tokens=tokens, min_clients=2)
    changes = {"data.num_clients": 2, "strategy.clients_per_round": 2}  # client 2 is not in it
    cfg = with_changes(cfg, rounds=1, **changes)
    exp = Experiment.from_config(cfg, backend=aggregator("127.0.0.1:0"))
    server = exp.federation.backend
    servers.append(server)
    assert server.auth.tokens == {0: "secret0", 1: "secret1"}

    def client(cid: int, token: str, task_id: str = "rt-test") -> RuntimeClient:
        return RuntimeClient(
            exp.task, server.address, cid, token=token, task_id=task_id, retry_for=5
        )

    with pytest.raises(RefusedError, match="bad token for client 0"):
        client(0, "nope").run()
    with pytest.raises(RefusedError, match="bad token for client 1"):
        client(1, "secret0").run()  # another client's token
    with pytest.raises(RefusedError, match="task 'other' is not served here"):
        client(0, "secret0", task_id="other").run()
    with stub_for(server.address) as stub:
        with pytest.raises(grpc.RpcError) as e:
            check_in(stub, 2, task_id="rt-test", token="secret0")
        assert code_of(e) == grpc.StatusCode.PERMISSION_DENIED and "unknown client 2" in str(
            e.value.details()
        )
        with pytest.raises(grpc.RpcError) as e:
            check_in(stub, 0, task_id="rt-test")  # no token at all
        assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    assert server.members == {}  # none of them was counted

    with stub_for(server.address) as stub:  # every call is checked, not only the check-in
        assert check_in(stub, 0, task_id="rt-test", token="secret0").accepted
        bad_poll = pb.PollRequest(task_id="rt-test", client_id="0", token="wrong")
        with pytest.raises(grpc.RpcError) as e:
            stub.Poll(bad_poll, timeout=10)
        assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    assert list(server.members) == [0]

    for cid in (0, 1):
        client_threads.start(client(cid, tokens[str(cid)]))
    result = exp.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors
    assert sorted(server.members) == [0, 1]
    assert result.history[0]["clients"] == 2


# -- security: TLS -------------------------------------------------------------------------------
def tls_experiment(tmp_path: Path, servers: list, certs, name: str, mutual: bool):
    runtime = {"tls_cert": certs.server_cert, "tls_key": certs.server_key, "min_clients": 2}
    if mutual:
        runtime["tls_client_ca"] = certs.ca
    two = {"data.num_clients": 2, "strategy.clients_per_round": 2}
    cfg = with_changes(base_config(tmp_path, name, **runtime), rounds=1, **two)
    exp = Experiment.from_config(cfg, backend=aggregator("127.0.0.1:0"))
    servers.append(exp.federation.backend)
    return exp, exp.federation.backend


def expect_no_talk(task, server, tls: TLSConfig | None, retry_for: float = 1.0) -> None:
    """A client that cannot complete a TLS handshake fails within about ``retry_for``."""
    t0 = time.monotonic()
    client = RuntimeClient(task, server.address, 0, task_id="rt-test", tls=tls, retry_for=retry_for)
    # the handshake fails: nothing gets through, and the client gives up with one line
    with pytest.raises(UnreachableError, match="UNAVAILABLE"):
        Background(client.run).result(timeout=retry_for + 30)
    assert time.monotonic() - t0 < retry_for + 20
    assert server.members == {}


def test_tls_training_works_and_a_plain_client_cannot_talk(
    tmp_path, servers, client_threads, certs
):
    exp, server = tls_experiment(tmp_path, servers, certs, "tls", mutual=False)
    expect_no_talk(exp.task, server, tls=None)  # plain channel to a TLS port
    expect_no_talk(exp.task, server, tls=TLSConfig(ca=certs.client_cert))  # does not trust it
    tls = client_tls(RuntimeConfig(tls_ca=certs.ca))  # verifies the server, shows no cert
    assert tls == TLSConfig(ca=certs.ca)
    for cid in (0, 1):
        client_threads.start(
            RuntimeClient(exp.task, server.address, cid, task_id="rt-test", tls=tls)
        )
    result = exp.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors
    assert result.history[0]["clients"] == 2
    assert all(v == 1 for v in client_threads.results.values())


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tmp_path, servers, client_threads, certs
):
    exp, server = tls_experiment(tmp_path, servers, certs, "mtls", mutual=True)
    expect_no_talk(exp.task, server, tls=TLSConfig(ca=certs.ca))  # no client certificate
    rt = RuntimeConfig(tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key)
    with_cert = client_tls(rt)
    assert with_cert == TLSConfig(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    for cid in (0, 1):
        client_threads.start(
            RuntimeClient(exp.task, server.address, cid, task_id="rt-test", tls=with_cert)
        )
    result = exp.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors
    assert result.history[0]["clients"] == 2


# -- bad updates ---------------------------------------------------------------------------------
def test_bad_updates_are_refused_with_a_reason_and_the_round_goes_on(servers, client_threads):
    """Client 0 trains normally; client 1 (a raw stub) uploads a bad update in rounds 1-3."""
    fed, server, task = tiny_federation(servers, rounds=4, min_clients=2)
    spec = fed.spec
    client_threads.start(RuntimeClient(task, server.address, 0))
    run = Background(fed.run)
    replies: list[pb.UploadReply] = []
    with stub_for(server.address) as stub:
        assert check_in(stub, 1).accepted
        for rnd in (1, 2, 3, 4):
            ins = poll_for_train(stub, 1)
            assert (ins.kind, ins.round, ins.version) == (pb.Instruction.TRAIN, rnd, rnd - 1)
            params = download(stub, 1, ins, spec)
            if rnd == 1:  # a tensor name the model does not have
                payload = encode(params, renamed(spec, "0.weight", "bogus.weight"))
            elif rnd == 2:  # the right names, a wrong shape
                payload = encode(params, reshaped(spec, "0.weight", (8, 6)))
            elif rnd == 3:  # NaN values
                params[spec.slice("2.bias")] = float("nan")
                payload = encode(params, spec)
            else:  # first a stale update (last round's), then a good one
                stale = upload(stub, 1, encode(params, spec), round=3, version=2)
                assert not stale.accepted and "stale round/version" in stale.reason
                payload = encode(params, spec)
            replies.append(upload(stub, 1, payload, round=ins.round, version=ins.version))
        result = run.result(timeout=60)
    server.finish()
    client_threads.join()
    assert not client_threads.errors

    assert [r.accepted for r in replies] == [False, False, False, True]
    assert "unknown tensors ['bogus.weight']" in replies[0].reason
    assert "0.weight: shape [8, 6], expected [6, 8]" in replies[1].reason
    assert "NaN or Inf" in replies[2].reason and "2.bias" in replies[2].reason
    rejections = [(rnd, cid) for rnd, cid, _ in server.rejections]
    assert rejections == [(1, 1), (2, 1), (3, 1), (3, 1)]  # the last: the stale one of round 4
    assert [why for *_, why in server.rejections][:3] == [r.reason for r in replies[:3]]
    assert "stale" in server.rejections[3][2]
    records = [(r["round"], r["clients"], r["rejected"]) for r in result.history]
    assert records == [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 2, 0)]
    assert torch.isfinite(result.params).all()


def test_an_update_for_another_round_or_unasked_is_refused(servers):
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0")
    servers.append(server.start())
    params = torch.zeros(spec.numel)
    with stub_for(server.address) as stub:
        check_in(stub, 0)
        check_in(stub, 1)
        server.distribute(2, RoundPlan([0]), params)
        payload = encode(params, spec)
        for rnd, version in ((1, 0), (2, 0), (3, 2)):  # old, wrong version, future
            reply = upload(stub, 0, payload, round=rnd, version=version)
            assert not reply.accepted and "stale round/version" in reply.reason
        reply = upload(stub, 1, payload, round=2, version=1)  # not sampled this round
        assert not reply.accepted and "not asked for this round" in reply.reason
        assert upload(stub, 0, payload, round=2, version=1).accepted
        again = upload(stub, 0, payload, round=2, version=1)  # a second copy
        assert not again.accepted and "duplicate" in again.reason
        with pytest.raises(grpc.RpcError) as e:  # a model that is not current
            stub.Download(
                pb.DownloadRequest(task_id="fedloom", client_id="0", round=1, version=0),
                timeout=10,
            ).next()
        assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:  # never checked in
            stub.Poll(pb.PollRequest(task_id="fedloom", client_id="5"), timeout=10)
        assert code_of(e) == grpc.StatusCode.NOT_FOUND
    assert [u.client_id for u in server.collect()] == [0]
    assert len(server.rejections) == 4 and server.tally.total["duplicate"] == 1


def test_a_malformed_chunk_stream_counts_as_a_rejected_update(servers, client_threads):
    """A sampled client whose upload stream ends before the bytes it announced is refused;
    like any bad update it is recorded and the round closes without waiting for it."""
    fed, server, task = tiny_federation(servers, rounds=1, min_clients=2)
    client_threads.start(RuntimeClient(task, server.address, 0))
    run = Background(fed.run)
    with stub_for(server.address) as stub:
        check_in(stub, 1)
        ins = poll_for_train(stub, 1)
        payload = encode(download(stub, 1, ins, fed.spec), fed.spec)
        chunks = list(
            iter_chunks(payload, 64, task_id="fedloom", client_id="1", round=1, num_samples=5)
        )
        reply = stub.Upload(iter(chunks[:-1]), timeout=10)  # the last chunk never comes
        assert not reply.accepted and "ended after" in reply.reason
        assert [(r, c) for r, c, _ in server.rejections] == [(1, 1)], (
            f"the refused stream is not recorded as client 1's update ({server.rejections}): "
            "round 1 would wait for client 1 until heartbeat_timeout or round_timeout"
        )
        result = run.result(timeout=8)  # not heartbeat_timeout (30 s): client 1 is alive
    server.finish()
    client_threads.join()
    assert [(r["clients"], r["rejected"]) for r in result.history] == [(1, 1)]


def test_an_upload_with_a_wrong_token_is_refused_before_it_counts(servers):
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0", tokens={0: "zero", 1: "one"})
    servers.append(server.start())
    payload = encode(torch.ones(spec.numel), spec)
    with stub_for(server.address) as stub:
        check_in(stub, 1, token="one")
        server.distribute(1, RoundPlan([1]), torch.zeros(spec.numel))
        for token in ("", "zero", "wrong"):
            chunks = iter_chunks(
                payload, 16, task_id="fedloom", client_id="1", token=token, round=1, num_samples=3
            )
            with pytest.raises(grpc.RpcError) as e:
                stub.Upload(chunks, timeout=10)
            assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
        assert server.rejections == []
        chunks = iter_chunks(
            payload, 16, task_id="fedloom", client_id="1", token="one", round=1, num_samples=3
        )
        assert stub.Upload(chunks, timeout=10).accepted
    (update,) = list(server.collect())
    assert update.client_id == 1 and torch.equal(update.params, torch.ones(spec.numel))


def test_a_client_handed_work_for_a_round_that_closed_carries_on(
    servers, client_threads, warm_optimizer
):
    """Client 1 is handed round 1 but only downloads once round 1 has timed out and round 2
    began (a slow link, or an aggregator restarted in between): the stale download is refused
    and the client must go on polling, not die."""
    round2 = threading.Event()

    class Round2(Callback):
        def on_state(self, fed, state, rnd):
            if state is RoundState.TRAIN and rnd == 2:
                round2.set()

    class LateDownload(RuntimeClient):  # overrides a private step: the only place to hold one
        def _train(self, ins):
            if ins.round == 1:
                assert round2.wait(20)
            super()._train(ins)

    fed, server, task = tiny_federation(
        servers, rounds=3, callbacks=[Round2()], min_clients=2, round_timeout=2.0
    )
    client_threads.start(RuntimeClient(task, server.address, 0))
    late = LateDownload(task, server.address, 1)
    client_threads.start(late)
    result = fed.run()
    server.finish()
    client_threads.join()
    assert not client_threads.errors, f"client 1 died: {client_threads.errors!r}"
    assert client_threads.results[1] == late.rounds_done
    assert result.history[0]["clients"] == 1


# -- quorum --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["round_timeout", "silent", "nan"])
def test_too_few_updates_fail_the_round_with_a_quorum_error(
    servers, client_threads, warm_optimizer, how
):
    kwargs: dict[str, Any] = {"min_clients": 2, "quorum": 2}
    if how == "round_timeout":
        kwargs["round_timeout"] = 1.0
    if how == "silent":
        kwargs["heartbeat_timeout"] = 1.0
    fed, server, task = tiny_federation(servers, rounds=2, short_round="abort", **kwargs)
    client_threads.start(RuntimeClient(task, server.address, 0))
    run = Background(fed.run)
    with stub_for(server.address) as stub:
        check_in(stub, 1)
        ins = poll_for_train(stub, 1)
        if how == "nan":
            params = download(stub, 1, ins, fed.spec).fill_(float("nan"))
            reply = upload(stub, 1, encode(params, fed.spec), round=1, version=0)
            assert not reply.accepted
        # "round_timeout": client 1 stays a member but never uploads;
        # "silent": it sends no heartbeat either and is dropped after 1 s
        with pytest.raises(QuorumError, match=r"round 1: 1 of 2 clients .* the quorum is 2"):
            run.result(timeout=30)
    assert fed.history == []
    assert (1 in server.members) == (how != "silent")
    server.finish()
    client_threads.join()
    assert not client_threads.errors


def test_bodies_that_are_not_messages_are_refused_without_a_traceback(servers, caplog):
    """Found by benchmarks/chaos.py: gRPC parsed a call's body before the handler ran, so a
    garbage body logged a traceback per call, from outsiders (whose refused calls were still
    parsed) and insiders alike. Refused calls are no longer parsed; an authenticated call
    whose body does not parse is one counted ``malformed`` refusal."""
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    server = AggregatorServer(spec, address="127.0.0.1:0", tokens={0: "zero"})
    servers.append(server.start())
    garbage = b"\xff" + bytes(range(40))  # field 31, wire type 7: never a valid message
    channel = grpc.insecure_channel(server.address)
    try:
        for token, code in (("wrong", grpc.StatusCode.UNAUTHENTICATED),
                            ("zero", grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
            md = (("fedloom-task", "fedloom"), ("fedloom-client", "0"), ("fedloom-token", token))
            for method in ("CheckIn", "Poll", "Download"):
                call = (channel.unary_stream if method == "Download" else channel.unary_unary)(
                    f"/fedloom.v1.Aggregator/{method}"
                )
                with pytest.raises(grpc.RpcError) as e:
                    list(call(garbage, metadata=md, timeout=10)) if method == "Download" else call(
                        garbage, metadata=md, timeout=10
                    )
                assert code_of(e) == code, method
    finally:
        channel.close()
    assert server.tally.total["bad_token"] == 3 and server.tally.total["malformed"] == 3
    assert "Traceback" not in caplog.text and "deserializing" not in caplog.text
    assert server.members == {}
