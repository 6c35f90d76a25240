"""A data holder's connection to the aggregator: the transport every client API shares.

:class:`ClientChannel` checks in (retrying with backoff until the aggregator answers), polls
for work, downloads the round's model and uploads an update, over the bulk port when the
aggregator offers one and over the gRPC stream otherwise (or when the bulk port fails), and
sends heartbeats from a background thread while the data holder trains. Every call carries the
identity metadata (:func:`~fedloom.runtime.gate.identity_metadata`) the aggregator checks
before it reads a byte. If the aggregator restarts (``--resume``) the channel sees "not checked
in", checks in again and carries on.

Two clients are built on it: :class:`~fedloom.runtime.client.RuntimeClient` (the engine
trains the user's :class:`~fedloom.Task`) and :func:`fedloom.connect` (the user's own loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator

import grpc

from ..errors import FedloomError, RefusedError, UnreachableError, WireError
from ..params import ParamSpec
from . import bulk
from .gate import identity_metadata
from .proto import fedloom_pb2 as pb
from .proto import fedloom_pb2_grpc as pb_grpc
from .security import TLSConfig, channel_credentials, client_ssl_context
from .transport import GRPC_OPTIONS, encode_chunks, join_chunks

log = logging.getLogger("fedloom.client")

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # the aggregator is busy: back off and try again
}


class ClientChannel:
    """Check-in, polling, model transfers, heartbeats and retries for one data holder.

    Subclasses say what they announce at check-in (:meth:`_announced_samples`) and what they
    do with the aggregator's answer (:meth:`_on_check_in`: the run seed and model spec).

    Args:
        server: the aggregator's ``host:port``.
        client_id: this data holder's id.
        token: the secret the aggregator expects from this client, if it uses tokens.
        task_id: the run's task id (``runtime.task_id``).
        tls: CA (and client cert/key for mutual TLS); ``None`` for a plain channel.
        retry_for: seconds to keep retrying an unreachable aggregator before giving up.
        backoff: (first, longest) pause between retries, in seconds.
        use_bulk: move models over the aggregator's bulk port when it offers one (falling
            back to gRPC when that fails); ``False`` always uses the gRPC stream.
    """

    # seconds between two logged retries of one call: the first is logged at once, then a
    # line every so often rather than one per backoff step (tens a minute)
    log_every = 5.0

    def __init__(
        self,
        server: str,
        client_id: int,
        *,
        token: str = "",
        task_id: str = "fedloom",
        tls: TLSConfig | None = None,
        retry_for: float = 60.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        use_bulk: bool = True,
    ):
        self.server, self.client_id = server, int(client_id)
        self.token, self.task_id, self.tls = token, task_id, tls
        self.retry_for, self.backoff = retry_for, backoff
        self.chunk_size = 1 << 20
        self.heartbeat_s = 5.0
        self.use_bulk, self.bulk_port = use_bulk, 0
        self.transfers = {"bulk": 0, "grpc": 0}
        self._ssl = None if tls is None else client_ssl_context(tls)
        self._recv = bytearray()  # reused for every download: no page faults per round
        self._md = identity_metadata(task_id, self.client_id, token)  # sent with every call

    # -- what a subclass decides ---------------------------------------------------------------
    def _announced_samples(self) -> int:
        """The weight announced at check-in (the aggregator bounds uploads by it)."""
        raise NotImplementedError

    def _on_check_in(self, reply, spec: ParamSpec) -> None:
        """Called after every accepted check-in with the reply and the aggregator's spec."""

    # -- the connection ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        """Open the gRPC channel (models move as raw serialised chunks: copied once each
        way) and close it at the end; gRPC statuses no retry can mend become one
        :class:`FedloomError` line naming the aggregator's answer."""
        try:
            with self._channel() as channel:
                self.stub = pb_grpc.AggregatorStub(channel)
                self._download = channel.unary_stream(
                    "/fedloom.v1.Aggregator/Download",
                    request_serializer=pb.DownloadRequest.SerializeToString,
                    response_deserializer=None,
                )
                self._upload = channel.stream_unary(
                    "/fedloom.v1.Aggregator/Upload",
                    request_serializer=None,
                    response_deserializer=pb.UploadReply.FromString,
                )
                yield
        except grpc.RpcError as e:
            raise self._unmendable(e) from None

    def _unmendable(self, e: grpc.RpcError) -> FedloomError:
        """A gRPC status no retry mends, as one line naming the aggregator's answer."""
        return FedloomError(
            f"client {self.client_id}: the aggregator at {self.server} answered "
            f"{e.code().name}: {e.details()}"
        )

    def _next_instruction(self):
        """Poll until the aggregator hands out work (TRAIN) or says STOP."""
        while True:
            ins = self._call(self._poll_call, self._poll())
            if ins.kind != pb.Instruction.WAIT:
                return ins
            time.sleep(ins.wait_s or 0.05)

    def _fetch(self, ins, limit: int) -> memoryview | bytes | None:
        """The wire bytes of the model ``ins`` names (bulk port, else gRPC), or None when its
        round closed before the download started (poll again)."""
        request = pb.DownloadRequest(
            task_id=self.task_id,
            client_id=str(self.client_id),
            token=self.token,
            round=ins.round,
            version=ins.version,
        )
        try:
            data = self._bulk_download(ins, limit)
            if data is None:
                _, data = self._call(
                    lambda r: join_chunks(self._download(r, metadata=self._md), limit), request
                )
                self.transfers["grpc"] += 1
        except (grpc.RpcError, bulk.BulkRefused) as e:
            code = e.code if isinstance(e, bulk.BulkRefused) else e.code().name
            if code != "FAILED_PRECONDITION":
                raise
            log.info(
                "client %d: round %d closed before we started (%s); polling again",
                self.client_id,
                ins.round,
                e.reason if isinstance(e, bulk.BulkRefused) else e.details(),
            )
            return None
        return data

    def _send(self, ins, parts: tuple[bytes, memoryview], num_samples: int, metrics: dict):
        """Upload an update (bulk port, else gRPC); the aggregator's UploadReply."""
        reply = self._bulk_upload(ins, parts, num_samples, metrics)
        if reply is None:
            reply = self._grpc_upload(ins, b"".join(parts), num_samples, metrics)
        return reply

    @contextlib.contextmanager
    def _heartbeats(self) -> Iterator[None]:
        """Keep the membership alive from a background thread while the body runs."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()

    def _grpc_upload(self, ins, payload: bytes, num_samples: int, metrics: dict):
        chunks = lambda: encode_chunks(  # noqa: E731 (rebuilt for each retry)
            payload,
            self.chunk_size,
            task_id=self.task_id,
            client_id=str(self.client_id),
            token=self.token,
            round=ins.round,
            version=ins.version,
            num_samples=num_samples,
            metrics_json=json.dumps(metrics),
        )
        reply = self._call(lambda _: self._upload(chunks(), metadata=self._md), None)
        self.transfers["grpc"] += 1
        return reply

    # -- the bulk channel ------------------------------------------------------------------
    def _bulk_header(self, op: str, ins, **more) -> dict:
        return dict(
            op=op,
            task_id=self.task_id,
            client_id=str(self.client_id),
            token=self.token,
            round=ins.round,
            version=ins.version,
            **more,
        )

    def _bulk_fail(self, what: str, e: Exception) -> None:
        """Fall back to gRPC until the next check-in offers the bulk port again."""
        log.info("client %d: bulk %s failed (%s); using gRPC", self.client_id, what, e)
        self.bulk_port = 0

    def _bulk_connect(self):
        host = self.server.rsplit(":", 1)[0]
        name = self.tls.server_name if self.tls else None
        return bulk.connect(host, self.bulk_port, self._ssl, name, timeout=60)

    def _bulk_download(self, ins, limit: int) -> memoryview | None:
        """The model's bytes over the bulk port, or None to use gRPC instead."""
        if not self.bulk_port:
            return None
        try:
            with self._bulk_connect() as sock:
                bulk.send_header(sock, self._bulk_header("download", ins))
                head = bulk.answer(bulk.recv_header(sock))
                total = int(head["total_bytes"])
                if not 0 <= total <= limit:
                    raise WireError(f"bulk download announces {total} bytes; limit {limit}")
                if len(self._recv) != total:
                    self._recv = bytearray(total)
                view = memoryview(self._recv)
                bulk.recv_into(sock, view)
        except bulk.BulkRefused as e:
            if e.code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"):
                raise RefusedError(f"client {self.client_id}: {e.reason}") from None
            if e.code == "FAILED_PRECONDITION":
                raise
            self._bulk_fail("download", e)  # NOT_FOUND: gRPC checks in again
            return None
        except (OSError, WireError, KeyError, ValueError) as e:
            self._bulk_fail("download", e)
            return None
        self.transfers["bulk"] += 1
        return view

    def _bulk_upload(self, ins, parts: tuple[bytes, memoryview], num_samples: int, metrics: dict):
        """Send an update over the bulk port; its UploadReply, or None to use gRPC."""
        if not self.bulk_port:
            return None
        header = self._bulk_header(
            "upload",
            ins,
            num_samples=num_samples,
            metrics_json=json.dumps(metrics),
            total_bytes=len(parts[0]) + len(parts[1]),
        )
        try:
            with self._bulk_connect() as sock:
                bulk.send_header(sock, header)
                head = bulk.answer(bulk.recv_header(sock))
                if head.get("go"):
                    for part in parts:  # header, then values from the tensor's own memory
                        sock.sendall(part)
                    head = bulk.answer(bulk.recv_header(sock))
        except bulk.BulkRefused as e:
            if e.code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"):
                raise RefusedError(f"client {self.client_id}: {e.reason}") from None
            self._bulk_fail("upload", e)
            return None
        except (OSError, WireError) as e:
            self._bulk_fail("upload", e)
            return None
        self.transfers["bulk"] += 1
        return pb.UploadReply(accepted=bool(head.get("accepted")), reason=head.get("reason", ""))

    # -- membership --------------------------------------------------------------------------
    def _check_in(self) -> None:
        request = pb.CheckInRequest(
            task_id=self.task_id,
            client_id=str(self.client_id),
            token=self.token,
            num_samples=self._announced_samples(),
        )
        reply = self._retry(lambda: self.stub.CheckIn(request, metadata=self._md))
        if not reply.accepted:
            raise RefusedError(f"client {self.client_id}: check-in refused: {reply.reason}")
        self.chunk_size = reply.chunk_size or self.chunk_size
        self.bulk_port = reply.bulk_port if self.use_bulk else 0
        self.heartbeat_s = reply.heartbeat_s or 5.0
        self._on_check_in(reply, ParamSpec.from_json(json.loads(reply.spec_json)))
        log.info("client %d checked in%s", self.client_id, " again" if reply.duplicate else "")

    def _heartbeat(self, stop: threading.Event) -> None:
        request = self._poll(busy=True)
        while not stop.wait(self.heartbeat_s):
            try:
                self.stub.Poll(request, timeout=10, metadata=self._md)
            except grpc.RpcError as e:
                log.debug("client %d: heartbeat failed: %s", self.client_id, e.code())

    def _poll_call(self, request):
        return self.stub.Poll(request, timeout=30, metadata=self._md)

    def _poll(self, busy: bool = False):
        return pb.PollRequest(
            task_id=self.task_id, client_id=str(self.client_id), token=self.token, busy=busy
        )

    # -- calls with retry --------------------------------------------------------------------
    def _call(self, method, request):
        """Call with retry; check in again if the aggregator no longer knows us (restart)."""
        while True:
            try:
                return self._retry(lambda: method(request))
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "client %d: aggregator forgot us (restarted?); checking in", self.client_id
                    )
                    self._check_in()
                    continue
                raise

    def _retry(self, fn):
        """``fn()``, retried with backoff while the aggregator is unavailable; each retry is
        logged (rate-limited by ``log_every``) and giving up after ``retry_for`` seconds is
        one :class:`UnreachableError` line naming the address and the last status."""
        delay, cap = self.backoff
        start = time.monotonic()
        logged = -math.inf
        while True:
            try:
                result = fn()
                if hasattr(result, "__next__"):  # server stream: pull it now, inside the retry
                    result = list(result)
                return result
            except grpc.RpcError as e:
                code = e.code()
                if code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise RefusedError(f"client {self.client_id}: {e.details()}") from None
                if code not in RETRYABLE:
                    raise
                now = time.monotonic()
                if now - start > self.retry_for:
                    raise UnreachableError(
                        f"client {self.client_id}: no aggregator at {self.server} after "
                        f"{now - start:.0f} s of retries (runtime.retry_for = {self.retry_for:g}); "
                        f"last status {code.name}: {e.details()}"
                    ) from None
                if now - logged >= self.log_every:
                    logged = now
                    log.warning(
                        "client %d: aggregator at %s unavailable (%s: %s); retrying for up to "
                        "%.0f s more",
                        self.client_id,
                        self.server,
                        code.name,
                        e.details(),
                        self.retry_for - (now - start),
                    )
                time.sleep(delay)
                delay = min(delay * 2, cap)

    def _channel(self) -> grpc.Channel:
        options = [
            *GRPC_OPTIONS,  # reconnect quickly after an aggregator restart
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.tls is None:
            return grpc.insecure_channel(self.server, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.secure_channel(self.server, channel_credentials(self.tls), options=options)
