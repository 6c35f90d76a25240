"""A data holder's connection to the aggregator: the transport every client API shares.

:class:`ClientChannel` checks in (retrying with backoff until the aggregator answers), polls
for work, downloads the round's model and uploads an update through its
:class:`~fedloom.runtime.transport.ModelTransport` s in turn (the bulk port when the aggregator
offers one, :mod:`.bulk_client`; the gRPC stream otherwise or when it fails, :mod:`.grpc_client`),
and sends heartbeats from a background thread while the data holder trains. Every call carries the
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
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from ..errors import BulkRefused, FedloomError, RefusedError, UnreachableError
from ..params import ParamSpec
from .bulk_client import BulkTransport
from .gate import identity_metadata
from .grpc_client import GrpcTransport
from .proto import fedloom_pb2 as pb
from .security import TLSConfig, channel_credentials, client_ssl_context
from .transport import GRPC_OPTIONS, Bytes, ModelHeader, ModelTransport

log = logging.getLogger("fedloom.client")

__all__ = ["RETRYABLE", "ClientChannel", "GrpcTransport", "RefusedError", "UnreachableError"]

T = TypeVar("T")

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
        self.use_bulk = use_bulk
        self.transfers = {"bulk": 0, "grpc": 0}
        ssl_context = None if tls is None else client_ssl_context(tls)
        host = server.rsplit(":", 1)[0]
        name = tls.server_name if tls else None
        self._bulk = BulkTransport(host, self.client_id, ssl_context, name)
        self._md = identity_metadata(task_id, self.client_id, token)  # sent with every call
        self._rpc_check_in: Any = None  # gRPC's callables while connected (untyped)
        self._rpc_poll: Any = None
        self._rpc_secagg: Any = None
        self._grpc: GrpcTransport | None = None

    @property
    def bulk_port(self) -> int:
        """The aggregator's bulk port while it is used (0: models move over gRPC)."""
        return self._bulk.port

    # -- what a subclass decides ---------------------------------------------------------------
    def _announced_samples(self) -> int:
        """The weight announced at check-in (the aggregator bounds uploads by it)."""
        raise NotImplementedError

    def _on_check_in(self, reply: pb.CheckInReply, spec: ParamSpec) -> None:
        """Called after every accepted check-in with the reply and the aggregator's spec."""

    # -- the connection ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        """Open the gRPC channel (models move as raw serialised chunks: copied once each
        way) and close it at the end; gRPC statuses no retry can mend become one
        :class:`FedloomError` line naming the aggregator's answer."""
        try:
            with self._channel() as channel:
                self._rpc_check_in = channel.unary_unary(
                    "/fedloom.v1.Aggregator/CheckIn",
                    request_serializer=pb.CheckInRequest.SerializeToString,
                    response_deserializer=pb.CheckInReply.FromString,
                )
                self._rpc_poll = channel.unary_unary(
                    "/fedloom.v1.Aggregator/Poll",
                    request_serializer=pb.PollRequest.SerializeToString,
                    response_deserializer=pb.Instruction.FromString,
                )
                self._rpc_secagg = channel.unary_unary(
                    "/fedloom.v1.Aggregator/SecAgg",
                    request_serializer=pb.SecAggRequest.SerializeToString,
                    response_deserializer=pb.SecAggReply.FromString,
                )
                self._grpc = GrpcTransport(channel, self)
                yield
        except grpc.RpcError as e:
            raise self._unmendable(e) from None

    def _unmendable(self, e: Any) -> FedloomError:  # e: a grpc.RpcError (untyped)
        """A gRPC status no retry mends, as one line naming the aggregator's answer."""
        return FedloomError(
            f"client {self.client_id}: the aggregator at {self.server} answered "
            f"{e.code().name}: {e.details()}"
        )

    def _next_instruction(self) -> pb.Instruction:
        """Poll until the aggregator hands out work (TRAIN) or says STOP."""
        request = self._poll()
        while True:
            ins = self._call(lambda: self._poll_call(request))
            if ins.kind != pb.Instruction.WAIT:
                return ins
            time.sleep(ins.wait_s or 0.05)

    def _transports(self) -> list[ModelTransport]:
        """The channels to try in order: the bulk port (when offered), then gRPC."""
        assert self._grpc is not None, "not connected"
        return [self._bulk, self._grpc]

    def _header(
        self, ins: pb.Instruction, num_samples: int = 0, metrics_json: str = ""
    ) -> ModelHeader:
        return ModelHeader(
            self.task_id,
            ins.round,
            ins.version,
            client_id=str(self.client_id),
            token=self.token,
            num_samples=num_samples,
            metrics_json=metrics_json,
        )

    def _fetch(self, ins: pb.Instruction, limit: int) -> Bytes | None:
        """The wire bytes of the model ``ins`` names (bulk port, else gRPC), or None when its
        round closed before the download started (poll again)."""
        header = self._header(ins)
        try:
            for transport in self._transports():
                data = transport.download(header, limit)
                if data is not None:
                    self.transfers[transport.name] += 1
                    return data
        except (grpc.RpcError, BulkRefused) as e:
            code = e.code if isinstance(e, BulkRefused) else e.code().name
            if code != "FAILED_PRECONDITION":
                raise
            log.info(
                "client %d: round %d closed before we started (%s); polling again",
                self.client_id,
                ins.round,
                e.reason if isinstance(e, BulkRefused) else e.details(),
            )
        return None

    def _send(
        self,
        ins: pb.Instruction,
        parts: tuple[bytes, memoryview],
        num_samples: int,
        metrics: dict[str, float],
    ) -> pb.UploadReply:
        """Upload an update (bulk port, else gRPC); the aggregator's UploadReply."""
        header = self._header(ins, num_samples, json.dumps(metrics))
        for transport in self._transports():
            reply = transport.upload(header, parts)
            if reply is not None:
                self.transfers[transport.name] += 1
                return reply
        raise AssertionError("the gRPC transport always answers")

    def _secagg_call(self, request: pb.SecAggRequest) -> pb.SecAggReply:
        """One ``SecAgg`` call (a secure round's stage message), retried while unavailable; an
        aggregator that forgot us (restarted) gets a check-in, then refuses the old session."""
        reply: pb.SecAggReply = self._call(
            lambda: self._rpc_secagg(request, timeout=60, metadata=self._md)
        )
        return reply

    def _identity(self) -> dict[str, str]:
        """The identity fields every request message carries."""
        return {"task_id": self.task_id, "client_id": str(self.client_id), "token": self.token}

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

    # -- membership --------------------------------------------------------------------------
    def _check_in(self) -> None:
        request = pb.CheckInRequest(
            task_id=self.task_id,
            client_id=str(self.client_id),
            token=self.token,
            num_samples=self._announced_samples(),
        )
        reply: pb.CheckInReply = self._retry(lambda: self._rpc_check_in(request, metadata=self._md))
        if not reply.accepted:
            raise RefusedError(f"client {self.client_id}: check-in refused: {reply.reason}")
        self.chunk_size = reply.chunk_size or self.chunk_size
        self._bulk.port = reply.bulk_port if self.use_bulk else 0
        self.heartbeat_s = reply.heartbeat_s or 5.0
        self._on_check_in(reply, ParamSpec.from_json(json.loads(reply.spec_json)))
        log.info("client %d checked in%s", self.client_id, " again" if reply.duplicate else "")

    def _heartbeat(self, stop: threading.Event) -> None:
        request = self._poll(busy=True)
        while not stop.wait(self.heartbeat_s):
            try:
                self._rpc_poll(request, timeout=10, metadata=self._md)
            except grpc.RpcError as e:
                log.debug("client %d: heartbeat failed: %s", self.client_id, e.code())

    def _poll_call(self, request: pb.PollRequest) -> pb.Instruction:
        reply: pb.Instruction = self._rpc_poll(request, timeout=30, metadata=self._md)
        return reply

    def _poll(self, busy: bool = False) -> pb.PollRequest:
        return pb.PollRequest(
            task_id=self.task_id, client_id=str(self.client_id), token=self.token, busy=busy
        )

    # -- calls with retry --------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` with retry; check in again if the aggregator no longer knows us (restart)."""
        while True:
            try:
                return self._retry(fn)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "client %d: aggregator forgot us (restarted?); checking in", self.client_id
                    )
                    self._check_in()
                    continue
                raise

    def _handshake_failed(self, details: str) -> UnreachableError:
        """The error of a TLS handshake our CA refused: final, as retrying cannot mend it."""
        assert self.tls is not None
        host = self.server.rsplit(":", 1)[0]
        return UnreachableError(
            f"client {self.client_id}: the TLS handshake with {self.server} failed: its "
            f"certificate is not signed by the CA in tls.ca ({self.tls.ca}) or does not name "
            f"{host} (tls.server_name overrides the name checked); {details}"
        )

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried with backoff while the aggregator is unavailable; each retry is
        logged (rate-limited by ``log_every``) and giving up after ``retry_for`` seconds is
        one :class:`UnreachableError` line naming the address and the last status."""
        delay, cap = self.backoff
        start = time.monotonic()
        logged = -math.inf
        while True:
            try:
                return fn()  # a server stream is read inside fn, so within the retry
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
                if self.tls is not None and "CERTIFICATE_VERIFY_FAILED" in (e.details() or ""):
                    # no retry mends a refused certificate: say so now, not after retry_for
                    raise self._handshake_failed(f"{code.name}: {e.details()}") from None
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

    def _channel(self) -> Any:  # a grpc.Channel (untyped)
        options: list[tuple[str, int | str]] = [
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
