"""Attacks on a running fedloom aggregator, as plain functions (no pytest, no fixtures).

The adversarial tests and the chaos benchmark both use these: each function takes the
aggregator's address (gRPC ``host:port``, or the bulk port's host and port), does one kind
of hostile thing for a bounded time and count, and returns what the aggregator answered, so
the caller can check that it refused what it should, in time, and kept its model clean.

Outsiders (no valid token): :func:`outsider_streams` (upload streams that never send a byte)
and :func:`slowloris_bulk` (bulk connections that trickle their header a byte at a time).
Insiders (a client id and its token): :func:`bad_ids`, :func:`bad_bulk_headers`,
:func:`bad_field_upload` (one upload with a hostile field), :func:`flood_uploads` (many
concurrent uploads for one round) and :func:`poisoned_payload` (finite but huge values).
Helpers: :func:`grpc_upload` and :func:`bulk_upload` send one update and say how it went;
:func:`raw_header` sends a bulk header as raw bytes (JSON that ``json.dumps`` would not write).

Every network call has a timeout; threads the functions start are joined with a deadline.
Only loopback addresses are meant here.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from fedloom import ParamSpec, encode
from fedloom.runtime import bulk
from fedloom.runtime.gate import CLIENT_KEY, TASK_KEY, TOKEN_KEY
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.transport import GRPC_OPTIONS, encode_chunks

UPLOAD = "/fedloom.v1.Aggregator/Upload"
CHECK_IN = "/fedloom.v1.Aggregator/CheckIn"


@dataclass(frozen=True)
class Outcome:
    """How one upload (or call) ended: ``kind`` is ``accepted``, ``refused`` (the aggregator
    answered accepted=False, or the call ended with a gRPC status), or ``error`` (the
    transport broke); ``code`` a gRPC status name where there is one; ``reason`` its text."""

    kind: str
    code: str = ""
    reason: str = ""

    @property
    def label(self) -> str:
        """``accepted``, ``duplicate`` or ``refused:<code>`` / ``error:<what>``: for tallies."""
        if self.kind == "accepted":
            return "accepted"
        if self.reason.startswith("duplicate"):
            return "duplicate"
        return f"{self.kind}:{self.code or self.reason[:40]}"


# -- one update, over either channel -----------------------------------------------------------
def grpc_upload(
    address: str,
    payload: bytes,
    *,
    task_id: str,
    client_id: str,
    token: str,
    round: int,
    version: int,
    num_samples: int,
    metrics_json: str = '{"loss": 1.0}',
    chunk_size: int = 1 << 20,
    timeout: float = 30.0,
    channel: grpc.Channel | None = None,
) -> Outcome:
    """Upload ``payload`` over gRPC with these header fields, as a client would."""
    own = channel is None
    ch = channel or grpc.insecure_channel(address, options=GRPC_OPTIONS)
    try:
        call = ch.stream_unary(
            UPLOAD, request_serializer=None, response_deserializer=pb.UploadReply.FromString
        )
        chunks = encode_chunks(
            payload,
            chunk_size,
            task_id=task_id,
            client_id=client_id,
            token=token,
            round=round,
            version=version,
            num_samples=num_samples,
            metrics_json=metrics_json,
        )
        md = ((TASK_KEY, task_id), (CLIENT_KEY, client_id), (TOKEN_KEY, token))
        reply = call(chunks, metadata=md, timeout=timeout)
    except grpc.RpcError as e:
        return Outcome("refused", e.code().name, e.details() or "")
    finally:
        if own:
            ch.close()
    return Outcome("accepted") if reply.accepted else Outcome("refused", "", reply.reason)


def bulk_upload(
    host: str,
    port: int,
    payload: bytes,
    *,
    task_id: str,
    client_id: str,
    token: str,
    round: int,
    version: int,
    num_samples: int,
    metrics_json: str = '{"loss": 1.0}',
    timeout: float = 30.0,
) -> Outcome:
    """Upload ``payload`` over the bulk channel (header, go-ahead, bytes, verdict)."""
    header = {
        "op": "upload",
        "task_id": task_id,
        "client_id": client_id,
        "token": token,
        "round": round,
        "version": version,
        "num_samples": num_samples,
        "metrics_json": metrics_json,
        "total_bytes": len(payload),
    }
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            bulk.send_header(sock, header)
            head = bulk.recv_header(sock, time.monotonic() + timeout)
            if head.get("go"):
                sock.sendall(payload)
                head = bulk.recv_header(sock, time.monotonic() + timeout)
    except (OSError, ValueError) as e:  # WireError is a ValueError
        return Outcome("error", type(e).__name__, str(e))
    if not head.get("ok"):
        return Outcome("refused", str(head.get("code", "")), str(head.get("reason", "")))
    if head.get("accepted"):
        return Outcome("accepted")
    return Outcome("refused", "", str(head.get("reason", "")))


def raw_header(host: str, port: int, body: bytes, timeout: float = 10.0) -> dict[str, Any] | None:
    """Send ``body`` as a bulk header, byte for byte (e.g. JSON with ``Infinity`` or
    ``1e400``); the aggregator's reply header, or None if it closed the connection instead."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">I", len(body)) + body)
            return bulk.recv_header(sock, time.monotonic() + timeout)
    except (OSError, ValueError):
        return None


# -- outsiders -----------------------------------------------------------------------------------
@dataclass
class OutsiderReport:
    started: float = 0.0  # time.monotonic() when the streams were opened
    answered_at: list[float] = field(default_factory=list)  # when each got its answer
    codes: Counter[str] = field(default_factory=Counter)  # final status of each stream
    unanswered: int = 0  # streams with no answer by the time their hold ended (+ a margin)

    @property
    def slowest_s(self) -> float:
        """The longest any stream waited for its answer."""
        return max(self.answered_at, default=self.started) - self.started


def outsider_streams(
    address: str,
    n: int = 300,
    hold_s: float = 3.0,
    *,
    task_id: str = "fedloom",
    client_id: str = "0",
    token: str | None = None,
    channels: int = 3,
    stop: threading.Event | None = None,
    report: OutsiderReport | None = None,
) -> OutsiderReport:
    """Open ``n`` Upload streams with no valid token that never send a byte, and hold them
    open from this side for ``hold_s`` seconds (or until ``stop`` is set); then return.
    An aggregator that authenticates from metadata answers every one at once
    (UNAUTHENTICATED) without waiting for a byte; one that read the stream first would keep
    a worker thread per stream for the whole hold.

    ``token`` None sends the task and client id but no token at all. ``report`` (filled in
    as answers come, so another thread can watch) is returned."""
    md: tuple[tuple[str, str], ...] = ((TASK_KEY, task_id), (CLIENT_KEY, client_id))
    if token is not None:
        md += ((TOKEN_KEY, token),)
    release = threading.Event()
    report = report if report is not None else OutsiderReport()

    def silence():
        release.wait(hold_s)  # never a byte; the stream ends when the hold is over
        return
        yield  # a generator that yields nothing

    chans = [grpc.insecure_channel(address, options=GRPC_OPTIONS) for _ in range(channels)]
    try:
        calls = [
            c.stream_unary(UPLOAD, request_serializer=None, response_deserializer=None)
            for c in chans
        ]
        t0 = report.started = time.monotonic()
        futures = [
            calls[i % channels].future(silence(), metadata=md, timeout=hold_s + 30)
            for i in range(n)
        ]
        for f in futures:
            f.add_done_callback(lambda _f: report.answered_at.append(time.monotonic()))
        deadline = t0 + hold_s + 10
        for f in futures:
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
                report.codes["OK"] += 1
            except grpc.FutureTimeoutError:
                report.unanswered += 1
                f.cancel()
            except grpc.RpcError as e:
                report.codes[e.code().name] += 1
        (stop or release).wait(max(0.0, t0 + hold_s - time.monotonic()))  # hold them all along
    finally:
        release.set()
        for c in chans:
            c.close()
    return report


@dataclass
class SlowlorisReport:
    opened: int = 0  # connections made
    closed_by_server: int = 0  # ... that the aggregator closed (header deadline, eviction)
    refused: int = 0  # connection attempts that failed outright
    longest_s: float = 0.0  # the longest one the aggregator kept open


def slowloris_bulk(
    host: str,
    port: int,
    n: int = 70,
    hold_s: float = 10.0,
    *,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    report: SlowlorisReport | None = None,
) -> SlowlorisReport:
    """Keep ``n`` connections to the bulk port, each trickling its header one byte every
    ``interval`` seconds (a plausible header: it would be valid if it ever finished), for
    ``hold_s`` seconds or until ``stop`` is set. A connection the aggregator closes is
    reopened at once, so the slots stay under pressure all along. ``report`` (updated as it
    goes, so another thread can watch) is returned."""
    body = json.dumps({"op": "download", "task_id": "fedloom", "client_id": "0"}).encode()
    message = struct.pack(">I", len(body)) + body
    report = report if report is not None else SlowlorisReport()
    conns: dict[socket.socket, tuple[float, int]] = {}  # socket -> (opened at, bytes sent)
    end = time.monotonic() + hold_s

    def open_one() -> None:
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            report.refused += 1
            return
        s.setblocking(False)
        conns[s] = (time.monotonic(), 0)
        report.opened += 1

    def closed(s: socket.socket) -> None:
        opened, _ = conns.pop(s)
        report.closed_by_server += 1
        report.longest_s = max(report.longest_s, time.monotonic() - opened)
        s.close()

    try:
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            while len(conns) < n and time.monotonic() < end:
                open_one()
                if report.refused > 10 * n:
                    return report  # nothing listens
            readable, _, _ = select.select(list(conns), [], [], 0)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:  # EOF or reset: the aggregator let go of it
                    closed(s)
            for s, (opened, sent) in list(conns.items()):
                if sent >= len(message) - 1:
                    continue  # never the last byte: the header stays unfinished
                try:
                    s.send(message[sent : sent + 1])
                    conns[s] = (opened, sent + 1)
                except BlockingIOError:
                    pass
                except OSError:
                    closed(s)
            (stop.wait if stop is not None else time.sleep)(min(interval, end - time.monotonic()))
    finally:
        for s in conns:
            s.close()
    return report


# -- insiders ------------------------------------------------------------------------------------
def bad_ids(address: str, *, task_id: str, token: str, samples: int = 10) -> dict[str, str]:
    """Check in as client 3 spelt otherwise: ``" 3 "`` and ``"03"`` in the call's metadata,
    ``"٣"`` (an Arabic-Indic three, which gRPC metadata cannot carry) in the message body under
    a correct ``"3"`` in the metadata. Each with client 3's ``token``. Returns the status name
    each got (``OK`` would be a wrong accept)."""
    out: dict[str, str] = {}
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        call = ch.unary_unary(
            CHECK_IN,
            request_serializer=pb.CheckInRequest.SerializeToString,
            response_deserializer=pb.CheckInReply.FromString,
        )
        for label, in_md, in_body in ((" 3 ", " 3 ", " 3 "), ("03", "03", "03"), ("٣", "3", "٣")):
            request = pb.CheckInRequest(
                task_id=task_id, client_id=in_body, token=token, num_samples=samples
            )
            md = ((TASK_KEY, task_id), (CLIENT_KEY, in_md), (TOKEN_KEY, token))
            try:
                call(request, metadata=md, timeout=10)
                out[label] = "OK"
            except grpc.RpcError as e:
                out[label] = e.code().name
    return out


BAD_BULK_ROUNDS: Mapping[str, bytes] = {
    "Infinity": b"Infinity",
    "1e400": b"1e400",
    '"3"': b'"3"',
    "true": b"true",
}


def bad_bulk_headers(
    host: str, port: int, *, task_id: str, client_id: str, token: str
) -> dict[str, dict[str, Any] | None]:
    """Bulk upload headers from an insider whose ``round`` is not an integer (each of
    :data:`BAD_BULK_ROUNDS`), and a download header naming client ``"٣"``. Returns each
    reply header (a refusal is ``{"ok": False, "code": ..., "reason": ...}``)."""
    out: dict[str, dict[str, Any] | None] = {}
    for label, value in BAD_BULK_ROUNDS.items():
        body = (
            b'{"op": "upload", "task_id": ' + json.dumps(task_id).encode()
            + b', "client_id": ' + json.dumps(client_id).encode()
            + b', "token": ' + json.dumps(token).encode()
            + b', "round": ' + value
            + b', "version": 0, "num_samples": 1, "total_bytes": 8}'
        )  # fmt: skip
        out[f"round {label}"] = raw_header(host, port, body)
    header = {"op": "download", "task_id": task_id, "client_id": "٣", "token": token}
    out["client_id ٣"] = raw_header(host, port, json.dumps(header).encode())
    return out


BAD_FIELDS: Mapping[str, dict[str, Any]] = {
    "metrics a JSON list": {"metrics_json": "[1, 2]"},
    "loss a string": {"metrics_json": '{"loss": "low"}'},
    "num_samples 2^62": {"num_samples": 1 << 62},
}


def bad_field_upload(
    address: str,
    kind: str,
    payload: bytes,
    *,
    task_id: str,
    client_id: str,
    token: str,
    round: int,
    version: int,
    num_samples: int,
    bulk_port: int = 0,
) -> Outcome:
    """One upload whose fields are as :data:`BAD_FIELDS` ``[kind]`` says, otherwise valid;
    over the bulk port when ``bulk_port`` is given, else over gRPC."""
    fields: dict[str, Any] = dict(
        task_id=task_id,
        client_id=client_id,
        token=token,
        round=round,
        version=version,
        num_samples=num_samples,
    )
    fields.update(BAD_FIELDS[kind])
    if bulk_port:
        return bulk_upload(address.rsplit(":", 1)[0], bulk_port, payload, **fields)
    return grpc_upload(address, payload, **fields)


def flood_uploads(
    address: str,
    payload: bytes,
    *,
    task_id: str,
    client_id: str,
    token: str,
    round: int,
    version: int,
    num_samples: int,
    n_grpc: int = 100,
    n_bulk: int = 50,
    bulk_port: int = 0,
    timeout: float = 60.0,
) -> Counter[str]:
    """``n_grpc`` gRPC uploads and ``n_bulk`` bulk ones of the same update for the same round,
    all released at once (a barrier). Returns the tally of :attr:`Outcome.label`: an
    aggregator that admits one upload per client and round gives exactly one ``accepted``."""
    host = address.rsplit(":", 1)[0]
    n = n_grpc + (n_bulk if bulk_port else 0)
    gate = threading.Barrier(n + 1)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    fields = dict(
        task_id=task_id,
        client_id=client_id,
        token=token,
        round=round,
        version=version,
        num_samples=num_samples,
        timeout=timeout,
    )
    channels = [grpc.insecure_channel(address, options=GRPC_OPTIONS) for _ in range(4)]

    def one(i: int) -> None:
        try:
            gate.wait(timeout)
            if i < n_grpc:
                out = grpc_upload(address, payload, channel=channels[i % 4], **fields)
            else:
                out = bulk_upload(host, bulk_port, payload, **fields)
        except Exception as e:  # noqa: BLE001 - counted, not raised: this is the attacker
            out = Outcome("error", type(e).__name__, str(e))
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    try:
        for t in threads:
            t.start()
        gate.wait(timeout)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        for c in channels:
            c.close()
    tally = Counter(o.label for o in outcomes)
    if missing := n - len(outcomes):
        tally["unfinished"] = missing
    return tally


def poisoned_payload(spec: ParamSpec, value: float = 3e38) -> bytes:
    """Model bytes whose every value is ``value``: finite (float32 holds up to 3.4e38), so
    the wire checks pass, but a weighted sum of them overflows to Inf."""
    return encode(torch.full((spec.numel,), value, dtype=spec.dtype), spec)
