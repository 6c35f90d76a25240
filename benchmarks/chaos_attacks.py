"""Attacks on a live aggregator, for the chaos benchmark (``benchmarks/chaos.py``).

Outsiders know the address and the task id but no token: they send gRPC calls with missing,
wrong or malformed identities, hold hundreds of Upload streams and TCP connections open
(slowloris), and send random bytes to both ports. An insider holds one valid client token
and sends bad fields, non-finite and huge models, duplicate and flooding uploads.

Every function is bounded in count and time, talks to 127.0.0.1 only, and returns counts:
``refused`` (the server said no, as it should), ``wrong_accepts`` (it said yes to something
it must refuse) and, where it applies, ``closed_by_server`` / ``held``.
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
from collections.abc import Iterator
from typing import Any

import grpc
import torch

from fedloom.params import ParamSpec
from fedloom.runtime import bulk
from fedloom.runtime.gate import identity_metadata
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.transport import GRPC_OPTIONS, encode_chunks, join_chunks
from fedloom.wire import decode, encode_parts

SERVICE = "/fedloom.v1.Aggregator/"
CALL_TIMEOUT = 10.0

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


def bad_metadata(task_id: str, i: int) -> tuple[tuple[str, str], ...]:
    task, client, token = BAD_IDENTITIES[i % len(BAD_IDENTITIES)]
    md = []
    for key, value in (
        ("fedloom-task", task),
        ("fedloom-client", client),
        ("fedloom-token", token),
    ):
        if value is not None:
            md.append((key, value.replace("{task}", task_id)))
    return tuple(md)


def _raw_methods(channel: grpc.Channel) -> dict[str, Any]:
    return {
        "CheckIn": channel.unary_unary(SERVICE + "CheckIn"),
        "Poll": channel.unary_unary(SERVICE + "Poll"),
        "Download": channel.unary_stream(SERVICE + "Download"),
        "Upload": channel.stream_unary(SERVICE + "Upload"),
    }


def _status(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    return code.name if code is not None else type(e).__name__


# -- outsiders: gRPC ---------------------------------------------------------------------------
def outsider_calls(address: str, task_id: str, n: int, seed: int) -> dict[str, Any]:
    """``n`` CheckIn/Poll/Download/Upload calls with bad identities and random or plausible
    bodies. Each must end with a non-OK status; an OK one is a wrong accept."""
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
            client = dict(md).get("fedloom-client", "0")
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
            try:
                if method == "Upload":
                    methods[method](iter([body]), metadata=md, timeout=CALL_TIMEOUT)
                elif method == "Download":
                    list(methods[method](body, metadata=md, timeout=CALL_TIMEOUT))
                else:
                    methods[method](body, metadata=md, timeout=CALL_TIMEOUT)
                codes["OK"] += 1
                wrong.append(f"{method} with metadata {md!r} succeeded")
            except grpc.RpcError as e:
                codes[_status(e)] += 1
    return {
        "calls": sum(codes.values()),
        "codes": dict(codes),
        "wrong_accepts": len(wrong),
        "wrong": wrong[:5],
    }


def held_upload_streams(address: str, task_id: str, n: int, hold_s: float) -> dict[str, Any]:
    """``n`` Upload streams without a valid token, each sending one chunk and then holding the
    stream open for up to ``hold_s``. The gate must refuse them at once (before reading), so
    ``refused_while_held`` should be ``n``; a stream answered OK is a wrong accept."""
    release = threading.Event()

    def body(i: int) -> Iterator[bytes]:
        yield pb.Chunk(
            task_id=task_id, client_id=str(i % 4), round=1, data=b"\0" * 1024
        ).SerializeToString()
        release.wait(hold_s)

    channels = [grpc.insecure_channel(address, options=GRPC_OPTIONS) for _ in range(3)]
    futures = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            upload = channels[i % len(channels)].stream_unary(SERVICE + "Upload")
            md = bad_metadata(task_id, i) or (("fedloom-task", task_id),)
            futures.append(upload.future(body(i), metadata=md, timeout=hold_s + 20))
        deadline = t0 + hold_s
        while time.monotonic() < deadline and not all(f.done() for f in futures):
            time.sleep(0.05)
        answered = sum(1 for f in futures if f.done())
        answer_s = time.monotonic() - t0
        release.set()
        codes: Counter[str] = Counter()
        for f in futures:
            try:
                f.result(timeout=20)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[_status(e)] += 1
            except grpc.FutureTimeoutError:
                codes["no_answer"] += 1
    finally:
        release.set()
        for f in futures:
            f.cancel()
        for c in channels:
            c.close()
    return {
        "streams": n,
        "refused_while_held": answered - codes["OK"],
        "seconds_to_answer_all": round(answer_s, 2) if answered == n else None,
        "codes": dict(codes),
        "wrong_accepts": codes["OK"],
    }


# -- outsiders: raw TCP ------------------------------------------------------------------------
GRPC_PARTIAL = b"PRI * HTTP/2.0\r\n"  # the first half of HTTP/2's connection preface
BULK_PARTIAL = b"\x00\x00"  # half of the bulk header's 4-byte length


def held_connections(
    port: int, n: int, hold_s: float, partial: bytes, stop: threading.Event | None = None
) -> dict[str, Any]:
    """Open ``n`` TCP connections to ``port``, send ``partial`` bytes on each, hold them for
    ``hold_s`` (or until ``stop``), then count how many the server had closed itself."""
    socks: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(partial)
                socks.append(s)
            except OSError:
                refused += 1
        end = time.monotonic() + hold_s
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            time.sleep(0.1)
        closed = 0
        for s in socks:
            s.setblocking(False)
            try:
                data = s.recv(1 << 16)
                closed += data == b""  # EOF: the server closed it
            except BlockingIOError:
                pass
            except OSError:  # reset
                closed += 1
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
    return {"opened": len(socks), "connect_refused": refused, "closed_by_server": closed}


def random_bytes(port: int, n: int, seed: int, *, bulk_port: bool) -> dict[str, Any]:
    """``n`` connections each sending random bytes (some shaped as a bulk length prefix); a
    bulk answer with ``ok: true`` is a wrong accept."""
    rng = random.Random(seed)
    answered, wrong = 0, 0
    for _ in range(n):
        size = rng.choice((1, 3, 4, 9, 64, 1024, 70_000))
        data = rng.randbytes(size)
        if bulk_port and rng.random() < 0.5:  # a plausible length, then junk
            data = struct.pack(">I", rng.randrange(0, 1 << 17)) + data
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
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


def bulk_outsider(port: int, task_id: str, n: int, seed: int) -> dict[str, Any]:
    """Well-formed bulk headers with bad identities and fields; each must get ``ok: false``
    (or a closed connection), never ``ok: true``."""
    rng = random.Random(seed)
    refused, closed, wrong = 0, 0, []
    for i in range(n):
        md = dict(bad_metadata(task_id, i))
        header: dict[str, Any] = {
            "op": rng.choice(("download", "upload", "delete", None)),
            "task_id": md.get("fedloom-task", ""),
            "client_id": md.get("fedloom-client", "0"),
            "token": md.get("fedloom-token", ""),
            "round": rng.choice((1, -1, 1 << 70, float("inf"), "1", None)),
            "version": rng.choice((0, 0.5, [0])),
            "num_samples": rng.choice((5, 1 << 62)),
            "total_bytes": rng.choice((10, 1 << 40, -1)),
        }
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                bulk.send_header(s, header)
                answer = bulk.recv_header(s, time.monotonic() + 10)
        except (OSError, ValueError, bulk.WireError):
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


# -- an insider: a client with a valid token ---------------------------------------------------
class Insider:
    """A checked-in client with a valid token that sends bad updates.

    In a round it is sampled for, it first sends uploads the server refuses without counting
    them as its update (bad header fields, another client's name, an ``Infinity`` round on the
    bulk port, ...), then exactly one update that is counted and rejected (NaN model, 3e38
    model, metrics as a list, a string loss, 2^62 samples; rotating), then a flood of
    duplicates. In rounds it is not sampled for it uploads anyway. (An upload refused before
    its bytes are read, such as one announcing 2^40 bytes, also counts as its update.)
    Replies ``accepted: true`` are wrong accepts, except the 3e38 model: it is finite, so
    the aggregator takes it and the round loop rejects it (``max_update_norm``), which the
    run's records show.
    """

    RECORDED = (
        "nan_model",
        "huge_model",
        "metrics_list",
        "string_loss",
        "samples_2_62",
        "bulk_total_bytes_2_40",
    )

    def __init__(self, address: str, task_id: str, client_id: int, token: str, samples: int):
        self.address, self.task_id, self.cid, self.token = address, task_id, client_id, token
        self.samples = samples
        self.md = identity_metadata(task_id, client_id, token)
        self.calls: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.sampled_rounds: list[int] = []
        self.recorded: dict[int, str] = {}
        self.server_accepted: list[str] = []
        self.errors: list[str] = []

    def run(self, deadline: float, current_round) -> None:
        """Until STOP or ``deadline``; ``current_round()`` says which round is open."""
        with grpc.insecure_channel(self.address, options=GRPC_OPTIONS) as channel:
            self.m = _raw_methods(channel)
            self.m["Upload"] = channel.stream_unary(
                SERVICE + "Upload", response_deserializer=pb.UploadReply.FromString
            )
            reply = pb.CheckInReply.FromString(
                self.m["CheckIn"](
                    pb.CheckInRequest(
                        task_id=self.task_id, client_id=str(self.cid), token=self.token,
                        num_samples=self.samples,
                    ).SerializeToString(),
                    metadata=self.md,
                    timeout=CALL_TIMEOUT,
                )
            )  # fmt: skip
            self.spec = ParamSpec.from_json(json.loads(reply.spec_json))
            self.bulk_port = reply.bulk_port
            self._bad_checkins()
            unsampled: set[int] = set()
            poll = pb.PollRequest(task_id=self.task_id, client_id=str(self.cid), token=self.token)
            while time.monotonic() < deadline:
                try:
                    ins = pb.Instruction.FromString(
                        self.m["Poll"](poll.SerializeToString(), metadata=self.md, timeout=35)
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

    # -- pieces ------------------------------------------------------------------------------
    def _expect_refusal(self, what: str, fn) -> None:
        self.calls[what] += 1
        try:
            out = fn()
        except grpc.RpcError:
            return
        except (OSError, bulk.WireError, bulk.BulkRefused):
            return
        accepted = getattr(out, "accepted", None)
        if isinstance(out, bytes | list):  # a raw call that succeeded
            accepted = True
        elif isinstance(out, dict):
            accepted = out.get("accepted", out.get("ok"))
        if accepted:
            self.wrong.append(f"{what}: accepted")

    def _bad_checkins(self) -> None:
        for n in (0, -5, 1 << 62):
            req = pb.CheckInRequest(
                task_id=self.task_id, client_id=str(self.cid), token=self.token, num_samples=n
            )
            self._expect_refusal(
                f"checkin_samples_{n}",
                lambda r=req: pb.CheckInReply.FromString(
                    self.m["CheckIn"](r.SerializeToString(), metadata=self.md, timeout=CALL_TIMEOUT)
                ),
            )
        # its own identity, bodies that are not protobuf messages
        rng = random.Random(self.cid)
        for method in ("CheckIn", "Poll", "Download", "CheckIn", "Poll", "Download"):
            body = b"\xff" + rng.randbytes(40)  # field 31, wire type 7: never valid

            def call(m=method, b=body):
                out = self.m[m](b, metadata=self.md, timeout=CALL_TIMEOUT)
                return list(out) if m == "Download" else out

            self._expect_refusal(f"garbage_body_{method}", call)
        # its own token, another client's id: the gate must refuse it
        other = identity_metadata(self.task_id, 0, self.token)
        req = pb.PollRequest(task_id=self.task_id, client_id="0", token=self.token)
        self._expect_refusal(
            "impersonate_client_0",
            lambda: self.m["Poll"](req.SerializeToString(), metadata=other, timeout=CALL_TIMEOUT),
        )

    def _download(self, ins) -> torch.Tensor:
        req = pb.DownloadRequest(
            task_id=self.task_id, client_id=str(self.cid), token=self.token,
            round=ins.round, version=ins.version,
        )  # fmt: skip
        stream = self.m["Download"](req.SerializeToString(), metadata=self.md, timeout=60)
        _, data = join_chunks(stream, self.spec.nbytes + (1 << 20))
        params, _ = decode(bytes(data), self.spec)
        return params.clone()

    def _payload(self, params: torch.Tensor, rnd: int) -> bytes:
        head, values = encode_parts(params, self.spec, {"round": rnd})
        return head + bytes(values)

    def _grpc_upload(self, payload: bytes, rnd: int, version: int, **fields: Any):
        header = dict(
            task_id=self.task_id, client_id=str(self.cid), token=self.token, round=rnd,
            version=version, num_samples=self.samples, metrics_json=json.dumps({"loss": 0.5}),
        )  # fmt: skip
        header.update(fields)
        chunks = list(encode_chunks(payload, 1 << 16, **header))
        return self.m["Upload"](iter(chunks), metadata=self.md, timeout=60)

    def _bulk_upload(self, payload: bytes, rnd: int, version: int, **fields: Any) -> dict:
        header: dict[str, Any] = dict(
            op="upload", task_id=self.task_id, client_id=str(self.cid), token=self.token,
            round=rnd, version=version, num_samples=self.samples,
            metrics_json=json.dumps({"loss": 0.5}), total_bytes=len(payload),
        )  # fmt: skip
        header.update(fields)
        with socket.create_connection(("127.0.0.1", self.bulk_port), timeout=10) as s:
            bulk.send_header(s, header) if "raw" not in fields else s.sendall(fields["raw"])
            answer = bulk.recv_header(s, time.monotonic() + 20)
            if answer.get("go"):
                s.sendall(payload)
                answer = bulk.recv_header(s, time.monotonic() + 30)
            return answer

    def _sampled(self, ins) -> None:
        rnd, ver = ins.round, ins.version
        self.sampled_rounds.append(rnd)
        try:
            params = self._download(ins)
        except (grpc.RpcError, Exception) as e:  # noqa: BLE001 - reported, the run goes on
            self.errors.append(f"download round {rnd}: {type(e).__name__}: {e}")
            params = torch.zeros(self.spec.numel, dtype=self.spec.dtype)
        good = self._payload(params, rnd)
        # refused without counting as the round's update
        inf_round = json.dumps(
            {"op": "upload", "task_id": self.task_id, "client_id": str(self.cid),
             "token": self.token, "round": float("inf"), "version": ver, "num_samples": 5,
             "total_bytes": len(good)}
        ).encode()  # fmt: skip
        raw = struct.pack(">I", len(inf_round)) + inf_round
        self._expect_refusal(
            "bulk_infinity_round", lambda: self._bulk_upload(good, rnd, ver, raw=raw)
        )
        self._expect_refusal(
            "bulk_round_as_string", lambda: self._bulk_upload(good, rnd, ver, round=str(rnd))
        )
        self._expect_refusal(
            "chunk_names_client_0", lambda: self._grpc_upload(good, rnd, ver, client_id="0")
        )
        self._expect_refusal(
            "metrics_too_long",
            lambda: self._grpc_upload(good, rnd, ver, metrics_json=" " * 20_000 + "{}"),
        )
        self._expect_refusal(
            "num_samples_0", lambda: self._grpc_upload(good, rnd, ver, num_samples=0)
        )
        # exactly one counted (and rejected) update
        kind = self.RECORDED[(len(self.sampled_rounds) - 1) % len(self.RECORDED)]
        self.recorded[rnd] = kind
        if kind == "nan_model":
            bad = params.clone()
            bad[:: max(1, bad.numel() // 7)] = float("nan")
            self._expect_refusal(kind, lambda: self._grpc_upload(self._payload(bad, rnd), rnd, ver))
        elif kind == "huge_model":  # finite: the server takes it, the loop's norm check must not
            huge = torch.full_like(params, 3e38)
            self.calls[kind] += 1
            try:
                answer = self._bulk_upload(self._payload(huge, rnd), rnd, ver)
                if answer.get("accepted"):
                    self.server_accepted.append(f"round {rnd}: {kind}")
            except (OSError, bulk.WireError) as e:
                self.errors.append(f"{kind}: {e}")
        elif kind == "metrics_list":
            self._expect_refusal(
                kind, lambda: self._grpc_upload(good, rnd, ver, metrics_json="[1, 2, 3]")
            )
        elif kind == "string_loss":
            self._expect_refusal(
                kind, lambda: self._bulk_upload(good, rnd, ver, metrics_json='{"loss": "low"}')
            )
        elif kind == "samples_2_62":
            self._expect_refusal(
                kind, lambda: self._grpc_upload(good, rnd, ver, num_samples=1 << 62)
            )
        else:  # an oversized announce is refused before a byte is read, and counted
            self._expect_refusal(
                kind, lambda: self._bulk_upload(good, rnd, ver, total_bytes=1 << 40)
            )
        self._flood(good, rnd, ver)

    def _flood(self, good: bytes, rnd: int, ver: int) -> None:
        """12 gRPC and 4 bulk uploads at once: duplicates, all refused."""
        threads = []
        for i in range(16):
            if i < 12:
                fn = lambda: self._grpc_upload(good, rnd, ver)  # noqa: E731
            else:
                fn = lambda: self._bulk_upload(good, rnd, ver)  # noqa: E731
            t = threading.Thread(target=self._expect_refusal, args=("flood_duplicate", fn))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(90)

    def _not_asked(self, rnd: int) -> None:
        params = torch.zeros(self.spec.numel, dtype=self.spec.dtype)
        payload = self._payload(params, rnd)
        self._expect_refusal("unsampled_upload", lambda: self._grpc_upload(payload, rnd, rnd - 1))
        self._expect_refusal("unsampled_bulk", lambda: self._bulk_upload(payload, rnd, rnd - 1))

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
