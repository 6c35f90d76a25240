"""Attacks on a running fedloom aggregator, as plain functions (no pytest, no fixtures).

The chaos benchmark (``benchmarks/chaos.py``) and the adversarial tests (``tests/adversarial``,
through a ``sys.path`` entry) both use these. Each function does one kind of hostile thing
for a bounded count and time, talks to 127.0.0.1 only, and returns what the aggregator
answered (an :class:`Outcome`, a report, or gRPC status names by label; ``OK`` or an
``accepted`` is a wrong accept), so the caller can check that it refused what it should, in
time, and kept its model clean.

Outsiders (no valid token): :func:`outsider_calls`, :func:`held_upload_streams`,
:func:`slowloris`, :func:`random_bytes`, :func:`outsider_bulk_headers`.
Insiders (a client id and its own token): :func:`bad_checkins`, :func:`bad_ids`,
:func:`garbage_bodies`, :func:`impersonate`, :func:`bad_bulk_headers`,
:func:`bad_field_upload`, :func:`flood_uploads`, :func:`poisoned_payload`; :class:`Insider`
plays them all through a whole run.
One update: :func:`grpc_upload`, :func:`bulk_upload`, :func:`raw_header`.

Every network call has a timeout; threads the functions start are joined with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from fedloom import ParamSpec, encode
from fedloom.runtime import bulk
from fedloom.runtime.gate import CLIENT_KEY, TASK_KEY, TOKEN_KEY
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.transport import GRPC_OPTIONS, encode_chunks, join_chunks
from fedloom.wire import decode

SERVICE = "/fedloom.v1.Aggregator/"
CALL_TIMEOUT = 10.0
Metadata = tuple[tuple[str, str], ...]


def identity(task_id: str, client_id: str, token: str | None = None) -> Metadata:
    """Call metadata naming a task and a client, as given (not checked or normalised);
    ``token`` None leaves the token key out."""
    md: Metadata = ((TASK_KEY, task_id), (CLIENT_KEY, client_id))
    return md if token is None else (*md, (TOKEN_KEY, token))


def _status(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    return code.name if code is not None else type(e).__name__


def _raw_methods(channel: grpc.Channel) -> dict[str, Any]:
    """The four calls, sending and returning bytes (so bodies need not be valid messages)."""
    return {
        "CheckIn": channel.unary_unary(SERVICE + "CheckIn"),
        "Poll": channel.unary_unary(SERVICE + "Poll"),
        "Download": channel.unary_stream(SERVICE + "Download"),
        "Upload": channel.stream_unary(SERVICE + "Upload"),
    }


def _call_status(fn: Callable[[], Any]) -> str:
    """``OK`` if ``fn()`` returned (consuming a stream it returns), else the status name."""
    try:
        out = fn()
        if isinstance(out, Iterator):
            list(out)
    except grpc.RpcError as e:
        return _status(e)
    return "OK"


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
        """``accepted``, ``duplicate``, ``stale`` (its round closed meanwhile) or
        ``refused:<code>`` / ``error:<what>``: for tallies."""
        if self.kind == "accepted":
            return "accepted"
        if self.reason.startswith("duplicate"):
            return "duplicate"
        if "stale round/version" in self.reason:
            return "stale"
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
    metadata: Metadata | None = None,
) -> Outcome:
    """Upload ``payload`` over gRPC with these chunk header fields, as a client would; the
    call's metadata is ``metadata`` if given (to name another client in the chunks than in
    the metadata), else task, client and token as in the chunks."""
    own = channel is None
    ch = channel or grpc.insecure_channel(address, options=GRPC_OPTIONS)
    try:
        call = ch.stream_unary(
            SERVICE + "Upload",
            request_serializer=None,
            response_deserializer=pb.UploadReply.FromString,
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
        md = metadata if metadata is not None else identity(task_id, client_id, token)
        reply = call(chunks, metadata=md, timeout=timeout)
    except grpc.RpcError as e:
        return Outcome("refused", _status(e), e.details() or "")
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
    round: Any,
    version: int,
    num_samples: int,
    metrics_json: str = '{"loss": 1.0}',
    total_bytes: int | None = None,
    timeout: float = 30.0,
) -> Outcome:
    """Upload ``payload`` over the bulk channel (header, go-ahead, bytes, verdict); the
    header announces ``total_bytes`` (default: the payload's length). A final answer with
    ``ok`` and without ``accepted: false`` counts as accepted."""
    header = {
        "op": "upload",
        "task_id": task_id,
        "client_id": client_id,
        "token": token,
        "round": round,
        "version": version,
        "num_samples": num_samples,
        "metrics_json": metrics_json,
        "total_bytes": len(payload) if total_bytes is None else total_bytes,
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
    if head.get("accepted", True):
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


# -- outsiders ---------------------------------------------------------------------------------
# identities an outsider may try: (task, client, token); None leaves the key out
BAD_IDENTITIES: list[tuple[str | None, str | None, str | None]] = [
    (None, None, None),  # no metadata at all
    ("{task}", "0", None),  # a real client id, no token
    ("{task}", "0", ""),
    ("{task}", "0", "wrong-token"),
    ("{task}", "1", "tok-0"),  # another client's token shape
    ("other-task", "0", "wrong-token"),
    ("{task}", "abc", "x"),
    ("{task}", "-1", "x"),
    ("{task}", " 3", "x"),
    ("{task}", "0x3", "x"),  # (non-ASCII ids cannot be sent: gRPC refuses them client-side)
    ("{task}", "1e3", "x"),
    ("{task}", "99999999999999999999", "x"),
    ("{task}", "4096", "x"),  # a well-formed id that is not a client
    ("{task}", "", "x"),
]


def bad_metadata(task_id: str, i: int) -> Metadata:
    """The ``i``-th of :data:`BAD_IDENTITIES` (cycling) as call metadata for ``task_id``."""
    keyed = zip((TASK_KEY, CLIENT_KEY, TOKEN_KEY), BAD_IDENTITIES[i % len(BAD_IDENTITIES)])
    return tuple((k, v.replace("{task}", task_id)) for k, v in keyed if v is not None)


def outsider_calls(address: str, task_id: str, n: int, seed: int) -> dict[str, Any]:
    """``n`` CheckIn/Poll/Download/Upload calls with :data:`BAD_IDENTITIES` and random or
    plausible bodies. Each must end with a non-OK status; an OK one is a wrong accept."""
    rng = random.Random(seed)
    codes: Counter[str] = Counter()
    wrong: list[str] = []
    t_end = time.monotonic() + max(30.0, n * 0.2)
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        methods = _raw_methods(channel)
        for i in range(n):
            if time.monotonic() > t_end:
                break
            md = bad_metadata(task_id, i)
            method = ("CheckIn", "Poll", "Download", "Upload")[i % 4]
            client = dict(md).get(CLIENT_KEY, "0")
            if rng.random() < 0.5:
                body = rng.randbytes(rng.randrange(0, 200))
            elif method == "CheckIn":
                body = pb.CheckInRequest(
                    task_id=task_id,
                    client_id=client,
                    token="x",
                    num_samples=rng.choice((1, 1 << 62)),
                ).SerializeToString()
            elif method == "Poll":
                body = pb.PollRequest(task_id=task_id, client_id=client).SerializeToString()
            elif method == "Download":
                body = pb.DownloadRequest(task_id=task_id, client_id=client).SerializeToString()
            else:
                body = pb.Chunk(
                    task_id=task_id, client_id=client, round=1, num_samples=5, data=b"x" * 64
                ).SerializeToString()
            arg = iter([body]) if method == "Upload" else body
            status = _call_status(
                lambda m=method, a=arg, md=md: methods[m](a, metadata=md, timeout=CALL_TIMEOUT)
            )
            codes[status] += 1
            if status == "OK":
                wrong.append(f"{method} with metadata {md!r} succeeded")
    return {
        "calls": sum(codes.values()),
        "codes": dict(codes),
        "wrong_accepts": len(wrong),
        "wrong": wrong[:5],
    }


@dataclass
class StreamsReport:
    """What :func:`held_upload_streams` saw, filled in as answers come."""

    started: float = 0.0  # time.monotonic() when the streams were opened
    answered_at: list[float] = field(default_factory=list)  # when each got its answer
    codes: Counter[str] = field(default_factory=Counter)  # final status of each stream
    unanswered: int = 0  # streams with no answer by the time their hold ended (+ a margin)

    @property
    def slowest_s(self) -> float:
        """The longest any stream waited for its answer."""
        return max(self.answered_at, default=self.started) - self.started

    def summary(self) -> dict[str, Any]:
        return {
            "streams": sum(self.codes.values()) + self.unanswered,
            "codes": dict(self.codes),
            "unanswered": self.unanswered,
            "slowest_s": round(self.slowest_s, 2),
            "wrong_accepts": self.codes["OK"],
        }


def held_upload_streams(
    address: str,
    n: int,
    hold_s: float,
    *,
    identities: Sequence[Metadata],
    first_chunk: bytes | None = None,
    channels: int = 3,
    stop: threading.Event | None = None,
    report: StreamsReport | None = None,
) -> StreamsReport:
    """Open ``n`` Upload streams with ``identities`` (cycled; none holds a valid token) that
    send ``first_chunk`` (or never a byte) and are then held open from this side for
    ``hold_s`` seconds (or until ``stop``). An aggregator that authenticates from metadata
    answers every one at once (UNAUTHENTICATED or the like) without waiting for a byte; one
    that read the stream first would keep a worker thread per stream for the whole hold.
    ``report`` (filled in as answers come, so another thread can watch) is returned."""
    release = threading.Event()
    report = report if report is not None else StreamsReport()

    def body() -> Iterator[bytes]:
        if first_chunk is not None:
            yield first_chunk
        release.wait(hold_s)  # the stream ends when the hold is over

    chans = [grpc.insecure_channel(address, options=GRPC_OPTIONS) for _ in range(channels)]
    try:
        calls = [
            c.stream_unary(SERVICE + "Upload", request_serializer=None, response_deserializer=None)
            for c in chans
        ]
        t0 = report.started = time.monotonic()
        futures = [
            calls[i % channels].future(
                body(), metadata=identities[i % len(identities)], timeout=hold_s + 30
            )
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
                report.codes[_status(e)] += 1
        (stop or release).wait(max(0.0, t0 + hold_s - time.monotonic()))  # hold them all along
    finally:
        release.set()
        for c in chans:
            c.close()
    return report


GRPC_PREFACE_HALF = b"PRI * HTTP/2.0\r\n"  # the first half of HTTP/2's connection preface
BULK_LENGTH_HALF = b"\x00\x00"  # half of the bulk header's 4-byte length
_download = json.dumps({"op": "download", "task_id": "fedloom", "client_id": "0"}).encode()
# a plausible bulk header (valid, were it ever finished) but for its last byte
BULK_HEADER_UNFINISHED = (struct.pack(">I", len(_download)) + _download)[:-1]


@dataclass
class SlowlorisReport:
    opened: int = 0  # connections made
    closed_by_server: int = 0  # ... that the aggregator closed (header deadline, eviction)
    refused: int = 0  # connection attempts that failed outright
    longest_s: float = 0.0  # the longest one the aggregator kept open, of those it closed

    def summary(self) -> dict[str, Any]:
        return {**vars(self), "longest_s": round(self.longest_s, 2)}


def slowloris(
    host: str,
    port: int,
    n: int,
    hold_s: float,
    *,
    partial: bytes,
    trickle_s: float | None = 1.0,
    reopen: bool = True,
    stop: threading.Event | None = None,
    report: SlowlorisReport | None = None,
) -> SlowlorisReport:
    """Keep ``n`` TCP connections to ``port`` that send ``partial`` (the start of a message,
    never its end): one byte every ``trickle_s`` seconds, or all at once when it is None,
    for ``hold_s`` seconds or until ``stop``. With ``reopen`` a connection the aggregator
    closes is reopened at once, so its slots stay under pressure all along. ``report``
    (updated as it goes, so another thread can watch) is returned."""
    report = report if report is not None else SlowlorisReport()
    conns: dict[socket.socket, tuple[float, int]] = {}  # socket -> (opened at, bytes sent)
    end = time.monotonic() + hold_s
    tick = trickle_s if trickle_s is not None else 0.1

    def open_one() -> None:
        try:
            s = socket.create_connection((host, port), timeout=5)
            if trickle_s is None:
                s.sendall(partial)
        except OSError:
            report.refused += 1
            return
        s.setblocking(False)
        conns[s] = (time.monotonic(), len(partial) if trickle_s is None else 0)
        report.opened += 1

    def closed(s: socket.socket) -> None:
        opened, _ = conns.pop(s)
        report.closed_by_server += 1
        report.longest_s = max(report.longest_s, time.monotonic() - opened)
        s.close()

    def reap() -> None:
        for s in list(conns):
            try:
                if s.recv(1 << 16) == b"":  # EOF: the aggregator let go of it
                    closed(s)
            except BlockingIOError:
                pass
            except OSError:  # reset
                closed(s)

    try:
        first = True
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            if first or reopen:
                for _ in range(n - len(conns)):
                    open_one()
                if report.refused > 10 * n:
                    return report  # nothing listens
                first = False
            reap()
            for s, (opened, sent) in list(conns.items()):
                if sent >= len(partial):
                    continue
                try:
                    s.send(partial[sent : sent + 1])
                    conns[s] = (opened, sent + 1)
                except BlockingIOError:
                    pass
                except OSError:
                    closed(s)
            (stop.wait if stop is not None else time.sleep)(
                max(0.0, min(tick, end - time.monotonic()))
            )
        reap()
    finally:
        for s in conns:
            s.close()
    return report


def random_bytes(host: str, port: int, n: int, seed: int, *, bulk_port: bool) -> dict[str, Any]:
    """``n`` connections each sending random bytes (on the bulk port, half of them after a
    plausible length prefix); a bulk answer with ``ok: true`` is a wrong accept."""
    rng = random.Random(seed)
    answered, wrong = 0, 0
    for _ in range(n):
        size = rng.choice((1, 3, 4, 9, 64, 1024, 70_000))
        data = rng.randbytes(size)
        if bulk_port and rng.random() < 0.5:  # a plausible length, then junk
            data = struct.pack(">I", rng.randrange(0, 1 << 17)) + data
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.settimeout(1.0)
                with contextlib.suppress(OSError):
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                reply = b""
                with contextlib.suppress(OSError):
                    reply = s.recv(1 << 16)
        except OSError:
            continue
        if reply:
            answered += 1
            if bulk_port and b'"ok": true' in reply:
                wrong += 1
    return {"connections": n, "answered": answered, "wrong_accepts": wrong}


def outsider_bulk_headers(host: str, port: int, task_id: str, n: int, seed: int) -> dict[str, Any]:
    """``n`` well-formed bulk headers with :data:`BAD_IDENTITIES` and bad fields; each must get
    ``ok: false`` (or a closed connection), never ``ok: true``."""
    rng = random.Random(seed)
    refused, closed, wrong = 0, 0, []
    for i in range(n):
        md = dict(bad_metadata(task_id, i))
        header: dict[str, Any] = {
            "op": rng.choice(("download", "upload", "delete", None)),
            "task_id": md.get(TASK_KEY, ""),
            "client_id": md.get(CLIENT_KEY, "0"),
            "token": md.get(TOKEN_KEY, ""),
            "round": rng.choice((1, -1, 1 << 70, float("inf"), "1", None)),
            "version": rng.choice((0, 0.5, [0])),
            "num_samples": rng.choice((5, 1 << 62)),
            "total_bytes": rng.choice((10, 1 << 40, -1)),
        }
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                bulk.send_header(s, header)
                answer = bulk.recv_header(s, time.monotonic() + 10)
        except (OSError, ValueError):  # WireError is a ValueError
            closed += 1
            continue
        if answer.get("ok"):
            wrong.append(f"bulk header {header!r} answered {answer!r}")
        else:
            refused += 1
    return {
        "requests": n,
        "refused": refused,
        "closed": closed,
        "wrong_accepts": len(wrong),
        "wrong": wrong[:5],
    }


# -- insiders: a client id and its own token ---------------------------------------------------
def _arabic(digits: str) -> str:
    """``digits`` in Arabic-Indic digits (what gRPC metadata cannot carry)."""
    return digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def bad_checkins(
    address: str,
    *,
    task_id: str,
    client_id: str,
    token: str,
    samples: Sequence[int] = (1 << 62, 0, -5),
) -> dict[str, str]:
    """Check in as this client declaring each of ``samples`` (out of range) samples. Returns
    the status each got, by ``"num_samples <n>"``."""
    out: dict[str, str] = {}
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        call = _raw_methods(ch)["CheckIn"]
        md = identity(task_id, client_id, token)
        for n in samples:
            request = pb.CheckInRequest(
                task_id=task_id, client_id=client_id, token=token, num_samples=n
            ).SerializeToString()
            out[f"num_samples {n}"] = _call_status(
                lambda r=request: call(r, metadata=md, timeout=CALL_TIMEOUT)
            )
    return out


def bad_ids(
    address: str, *, task_id: str, client_id: str, token: str, samples: int = 10
) -> dict[str, str]:
    """Check in as this client spelt otherwise: for client 3, ``" 3 "`` and ``"03"`` in the
    call's metadata and body, ``"٣"`` (Arabic-Indic, which gRPC metadata cannot carry) in the
    body under a correct ``"3"`` in the metadata; each with the client's ``token``. Returns
    the status each got, by spelling."""
    out: dict[str, str] = {}
    spellings = ((f" {client_id} ",) * 2, (f"0{client_id}",) * 2, (client_id, _arabic(client_id)))
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        call = _raw_methods(ch)["CheckIn"]
        for in_md, in_body in spellings:
            request = pb.CheckInRequest(
                task_id=task_id, client_id=in_body, token=token, num_samples=samples
            ).SerializeToString()
            md = identity(task_id, in_md, token)
            out[in_body] = _call_status(lambda r=request, md=md: call(r, metadata=md, timeout=10))
    return out


def garbage_bodies(
    address: str, *, task_id: str, client_id: str, token: str, n: int = 6, seed: int = 0
) -> dict[str, str]:
    """``n`` CheckIn/Poll/Download calls (rotating) with the client's own identity and a body
    that is no protobuf message. Returns the status each got, by ``"<method> #<i>"``."""
    rng = random.Random(seed)
    md = identity(task_id, client_id, token)
    out: dict[str, str] = {}
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        methods = _raw_methods(ch)
        for i in range(n):
            method = ("CheckIn", "Poll", "Download")[i % 3]
            body = b"\xff" + rng.randbytes(40)  # field 31, wire type 7: never valid
            out[f"{method} #{i}"] = _call_status(
                lambda m=method, b=body: methods[m](b, metadata=md, timeout=CALL_TIMEOUT)
            )
    return out


def impersonate(address: str, *, task_id: str, token: str, victim: str = "0") -> str:
    """A Poll naming client ``victim`` (in metadata and body) with another client's
    ``token``; the status it got."""
    request = pb.PollRequest(task_id=task_id, client_id=victim, token=token).SerializeToString()
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        call = _raw_methods(ch)["Poll"]
        md = identity(task_id, victim, token)
        return _call_status(lambda: call(request, metadata=md, timeout=CALL_TIMEOUT))


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
    :data:`BAD_BULK_ROUNDS`), and a download header naming the client in Arabic-Indic
    digits. Returns each reply header (a refusal is ``{"ok": False, "code": ..., ...}``;
    None is a closed connection)."""
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
    other = _arabic(client_id)
    header = {"op": "download", "task_id": task_id, "client_id": other, "token": token}
    out[f"client_id {other}"] = raw_header(host, port, json.dumps(header).encode())
    return out


# hostile fields for an otherwise valid upload. Counted as the client's update (and rejected
# by the round): the first four; refused before that: the last three.
BAD_FIELDS: Mapping[str, dict[str, Any]] = {
    "metrics a JSON list": {"metrics_json": "[1, 2]"},
    "loss a string": {"metrics_json": '{"loss": "low"}'},
    "num_samples 2^62": {"num_samples": 1 << 62},
    "total_bytes 2^40": {"total_bytes": 1 << 40},  # bulk only
    "chunks name client 0": {"client_id": "0"},  # gRPC only: the metadata names the sender
    "metrics 20 kB long": {"metrics_json": " " * 20_000 + "{}"},
    "num_samples 0": {"num_samples": 0},
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
    channel: grpc.Channel | None = None,
) -> Outcome:
    """One upload whose fields are as :data:`BAD_FIELDS` ``[kind]`` says, otherwise valid
    (the call's metadata names the client itself); over the bulk port when ``bulk_port`` is
    given, else over gRPC."""
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
    md = identity(task_id, client_id, token)
    return grpc_upload(address, payload, metadata=md, channel=channel, **fields)


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
    aggregator that admits one upload per client and round gives at most one ``accepted``."""
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


def poisoned_payload(
    spec: ParamSpec,
    value: float = 3e38,
    *,
    base: torch.Tensor | None = None,
    stride: int = 1,
    meta: Mapping[str, object] | None = None,
) -> bytes:
    """Model bytes holding ``value`` at every ``stride``-th place of ``base`` (default zeros):
    3e38 is finite (float32 holds up to 3.4e38), so the wire checks pass, but a weighted sum
    of such values overflows to Inf; NaN must be refused on arrival."""
    t = base.clone() if base is not None else torch.zeros(spec.numel, dtype=spec.dtype)
    t[::stride] = value
    return encode(t, spec, meta)


# -- an insider through a whole run ------------------------------------------------------------
class Insider:
    """A checked-in client with a valid token that plays every insider attack in a run.

    After its check-in: :func:`bad_checkins`, :func:`bad_ids`, :func:`garbage_bodies` and
    :func:`impersonate`. In a round it is sampled for, it first sends what the server refuses
    without counting it as its update (:func:`bad_bulk_headers`, the uncounted
    :data:`BAD_FIELDS`), then exactly one update that is counted and rejected (rotating
    through :attr:`COUNTED`), then a flood of duplicates. In rounds it is not sampled for it
    uploads anyway. An ``accepted`` or ``OK`` is a wrong accept, except for the 3e38 model:
    it is finite, so the aggregator takes it and the round loop rejects it
    (``max_update_norm``), which the run's records show.
    """

    COUNTED = (
        "nan_model",
        "huge_model",
        "metrics a JSON list",
        "loss a string",
        "num_samples 2^62",
        "total_bytes 2^40",
    )
    UNCOUNTED = ("chunks name client 0", "metrics 20 kB long", "num_samples 0")
    VIA_BULK = frozenset({"loss a string", "total_bytes 2^40", "huge_model"})

    def __init__(self, address: str, task_id: str, client_id: int, token: str, samples: int):
        self.address, self.task_id, self.token = address, task_id, token
        self.cid, self.samples = str(client_id), samples
        self.host = address.rsplit(":", 1)[0]
        self.me = dict(task_id=task_id, client_id=self.cid, token=token)
        self.md = identity(task_id, self.cid, token)
        self.calls: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.sampled_rounds: list[int] = []
        self.recorded: dict[int, str] = {}
        self.server_accepted: list[str] = []
        self.errors: list[str] = []

    def run(self, deadline: float, current_round: Callable[[], int]) -> None:
        """Until STOP or ``deadline``; ``current_round()`` says which round is open."""
        task_id, token = self.task_id, self.token
        with grpc.insecure_channel(self.address, options=GRPC_OPTIONS) as channel:
            self.channel, self.m = channel, _raw_methods(channel)
            reply = pb.CheckInReply.FromString(
                self.m["CheckIn"](
                    pb.CheckInRequest(**self.me, num_samples=self.samples).SerializeToString(),
                    metadata=self.md,
                    timeout=CALL_TIMEOUT,
                )
            )
            self.spec = ParamSpec.from_json(json.loads(reply.spec_json))
            self.bulk_port = reply.bulk_port
            for attack, statuses in (
                ("checkin", bad_checkins(self.address, **self.me)),
                ("bad_id", bad_ids(self.address, **self.me)),
                ("garbage_body", garbage_bodies(self.address, **self.me, seed=int(self.cid))),
                (
                    "impersonate",
                    {"client 0": impersonate(self.address, task_id=task_id, token=token)},
                ),
            ):
                for label, status in statuses.items():
                    self._tally(f"{attack} {label}", status == "OK")
            unsampled: set[int] = set()
            poll = pb.PollRequest(**self.me).SerializeToString()
            while time.monotonic() < deadline:
                try:
                    ins = pb.Instruction.FromString(
                        self.m["Poll"](poll, metadata=self.md, timeout=35)
                    )
                except grpc.RpcError as e:
                    self.errors.append(f"poll: {_status(e)}")
                    if _status(e) in ("UNAVAILABLE", "CANCELLED"):
                        return  # the aggregator is gone (the run is over)
                    time.sleep(0.2)
                    continue
                if ins.kind == pb.Instruction.STOP:
                    return
                if ins.kind == pb.Instruction.TRAIN:
                    self._sampled(ins)
                    continue
                rnd = current_round()
                if rnd not in unsampled and rnd not in self.sampled_rounds:
                    unsampled.add(rnd)
                    self._not_asked(rnd)
                time.sleep(ins.wait_s or 0.05)

    def _tally(self, what: str, accepted: bool) -> None:
        self.calls[what] += 1
        if accepted:
            self.wrong.append(f"{what}: accepted")

    def _upload(self, kind: str | None, payload: bytes, rnd: int, version: int) -> Outcome:
        fields = dict(self.me, round=rnd, version=version, num_samples=self.samples)
        via_bulk = kind in self.VIA_BULK
        if kind in BAD_FIELDS:
            port = self.bulk_port if via_bulk else 0
            return bad_field_upload(
                self.address, kind, payload, **fields, bulk_port=port, channel=self.channel
            )
        if via_bulk:
            return bulk_upload(self.host, self.bulk_port, payload, **fields)
        return grpc_upload(self.address, payload, **fields, channel=self.channel, timeout=60)

    def _download(self, ins) -> torch.Tensor:
        req = pb.DownloadRequest(**self.me, round=ins.round, version=ins.version)
        stream = self.m["Download"](req.SerializeToString(), metadata=self.md, timeout=60)
        _, data = join_chunks(stream, self.spec.nbytes + (1 << 20))
        params, _ = decode(bytes(data), self.spec)
        return params.clone()

    def _sampled(self, ins) -> None:
        rnd, ver = ins.round, ins.version
        self.sampled_rounds.append(rnd)
        try:
            params = self._download(ins)
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            self.errors.append(f"download round {rnd}: {type(e).__name__}: {e}")
            params = torch.zeros(self.spec.numel, dtype=self.spec.dtype)
        meta = {"round": rnd}
        good = encode(params, self.spec, meta)
        # refused without counting as the round's update
        for label, reply in bad_bulk_headers(self.host, self.bulk_port, **self.me).items():
            self._tally(f"bulk {label}", bool(reply and reply.get("ok")))
        for kind in self.UNCOUNTED:
            self._tally(kind, self._upload(kind, good, rnd, ver).kind == "accepted")
        # exactly one counted (and rejected) update
        kind = self.COUNTED[(len(self.sampled_rounds) - 1) % len(self.COUNTED)]
        self.recorded[rnd] = kind
        payload = good
        if kind == "nan_model":
            stride = max(1, params.numel() // 7)
            payload = poisoned_payload(
                self.spec, float("nan"), base=params, stride=stride, meta=meta
            )
        elif kind == "huge_model":
            payload = poisoned_payload(self.spec, 3e38, meta=meta)
        out = self._upload(kind, payload, rnd, ver)
        if kind != "huge_model":
            self._tally(kind, out.kind == "accepted")
        else:  # finite: the server takes it, the loop's norm check must not
            self.calls[kind] += 1
            if out.kind == "accepted":
                self.server_accepted.append(f"round {rnd}: {kind}")
            elif out.kind == "error":
                self.errors.append(f"{kind}: {out.code}: {out.reason}")
        # duplicates, all at once: every one refused
        n_grpc, n_bulk = 12, 4
        flood = flood_uploads(
            self.address, good, **self.me, round=rnd, version=ver, num_samples=self.samples,
            n_grpc=n_grpc, n_bulk=n_bulk, bulk_port=self.bulk_port, timeout=90,
        )  # fmt: skip
        self.calls["flood_duplicate"] += n_grpc + n_bulk
        if flood["accepted"]:
            self.wrong.append(f"flood_duplicate: {flood['accepted']} accepted")

    def _not_asked(self, rnd: int) -> None:
        payload = poisoned_payload(self.spec, 0.0, meta={"round": rnd})
        self._tally(
            "unsampled_upload", self._upload(None, payload, rnd, rnd - 1).kind == "accepted"
        )
        out = bulk_upload(
            self.host, self.bulk_port, payload, **self.me,
            round=rnd, version=rnd - 1, num_samples=self.samples,
        )  # fmt: skip
        self._tally("unsampled_bulk", out.kind == "accepted")

    def report(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "sampled_rounds": self.sampled_rounds,
            "counted_update_kinds": {str(k): v for k, v in self.recorded.items()},
            "server_accepted_finite_huge": self.server_accepted,
            "wrong_accepts": len(self.wrong),
            "wrong": self.wrong[:10],
            "errors": self.errors[:10],
        }
