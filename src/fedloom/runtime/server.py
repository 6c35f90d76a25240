"""The aggregator: a gRPC service that is also the round loop's backend.

:class:`Federation` runs unchanged; where the simulation trains clients in-process, this
backend hands each sampled client its work through ``Poll``, serves the model through
``Download`` and receives updates through ``Upload``. Updates are checked on arrival (token,
round, version, spec, NaN/Inf) and handed to the strategy in client-id order, so a sync run
aggregates exactly as the simulation does: same seed, bit-identical parameters.

Membership follows AlphaMed's check-in: the aggregator starts once ``min_clients`` have
checked in (or ``start_timeout`` passes); a repeated check-in is recognised, not counted
twice; a client that joins later is sampled from the next round; a client silent for
``heartbeat_timeout`` is dropped and the round completes if ``quorum`` updates arrived.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from ..algorithms.base import RoundPlan
from ..errors import FedloomError, WireError
from ..params import ParamSpec
from ..update import ClientUpdate
from ..wire import decode_bundle, encode_bundle
from .bulk import BulkServer, recv_into, send_header
from .proto import fedloom_pb2 as pb
from .proto import fedloom_pb2_grpc as pb_grpc
from .security import TLSConfig, server_credentials, server_ssl_context
from .transport import DEFAULT_CHUNK, GRPC_OPTIONS, encode_chunks, join_chunks, split_chunk

log = logging.getLogger("fedloom.server")


class QuorumError(FedloomError, RuntimeError):
    """Too few clients returned an update for a round to count."""


class Refused(Exception):
    """A request the aggregator turns down; gRPC calls abort with ``code``."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class Member:
    client_id: int
    num_samples: int
    last_seen: float
    joined_round: int


class AggregatorServer(pb_grpc.AggregatorServicer):
    """gRPC aggregator and :class:`~fedloom.federation.Backend` in one object.

    Args:
        spec: the model spec uploads are checked against.
        task_id: every message must name it.
        seed: the run seed, sent to clients so their training matches the simulation's.
        address: ``host:port`` to listen on (port 0 picks a free one; see ``port``).
        min_clients: check-ins needed before the first round starts.
        start_timeout: seconds to wait for ``min_clients``; after it, start with those present
            (at least one). ``None`` waits for ever.
        quorum: updates a round needs to count; fewer raises :class:`QuorumError`.
        heartbeat_timeout: a client silent this long is dropped.
        round_timeout: seconds a round waits for its clients before closing with what it has.
        tokens: client id -> token; when given, every call must carry its client's token and
            unknown clients are refused.
        tls: server certificate and key (and client CA for mutual TLS).
        chunk_size: bytes per streamed chunk.
        max_update_bytes: the largest upload accepted (default: room for the model and
            ``max_update_extras`` buffers of its size, such as SCAFFOLD's control variate,
            plus 1 MiB).
        bulk: also serve models on a second port (``bulk_port``, 0 picks one) as raw bytes
            beside gRPC (see :mod:`fedloom.runtime.bulk`); clients fall back to gRPC when
            they cannot reach it.
    """

    def __init__(
        self,
        spec: ParamSpec,
        *,
        task_id: str = "fedloom",
        seed: int = 0,
        address: str = "127.0.0.1:0",
        min_clients: int = 1,
        start_timeout: float | None = None,
        quorum: int = 1,
        heartbeat_timeout: float = 30.0,
        round_timeout: float | None = None,
        tokens: dict[int, str] | None = None,
        tls: TLSConfig | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        max_update_bytes: int | None = None,
        poll_interval: float = 0.05,
        long_poll: float = 1.0,
        max_workers: int = 256,
        mode: str = "sync",
        keep_versions: int = 21,
        bulk: bool = True,
        bulk_port: int = 0,
        max_update_extras: int = 2,
    ):
        if min_clients < 1 or quorum < 1:
            raise ValueError("min_clients and quorum must be >= 1")
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        self.mode, self.keep_versions = mode, keep_versions
        self._versions: dict[int, tuple[bytes, list[bytes], torch.Tensor]] = {}
        self._busy: set[int] = set()
        self._queue: queue.Queue[ClientUpdate] = queue.Queue()
        self.spec, self.task_id, self.seed = spec, task_id, seed
        self.min_clients, self.start_timeout, self.quorum = min_clients, start_timeout, quorum
        self.heartbeat_timeout, self.round_timeout = heartbeat_timeout, round_timeout
        self.tokens = {int(k): v for k, v in tokens.items()} if tokens else None
        self.chunk_size, self.poll_interval, self.long_poll = chunk_size, poll_interval, long_poll
        self._holding, self._max_holding = 0, max(0, max_workers - 32)
        self._polling: dict[int, int] = {}  # clients whose poll we are holding: alive
        room = spec.nbytes * (1 + max(0, max_update_extras)) + (1 << 20)
        self.max_update_bytes = max_update_bytes or room
        self.members: dict[int, Member] = {}
        self.rejections: list[tuple[int, int, str]] = []
        self._cv = threading.Condition()
        self._round = 0
        self._version = 0
        self._plan = RoundPlan([])
        self._model, self._chunks = b"", []  # this version's wire bytes and Chunk messages
        self._config_json = "{}"
        self._handed: set[int] = set()
        self._results: dict[int, ClientUpdate] = {}
        # sync mode: the receive buffers of a round's updates are reused the round after
        # (updates are valid only until the next is drawn), sparing the page faults of a
        # fresh buffer per upload; async updates outlive rounds and get fresh buffers.
        self._buffers: dict[int, bytearray] = {}
        self._free: list[bytearray] = []
        self._finished = False
        self._started = False
        self._created = time.monotonic()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS
        )
        self._server.add_generic_rpc_handlers((self._handlers(),))
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, server_credentials(tls))
        if self.port == 0:
            raise FedloomError(f"cannot listen on {address}")
        self.host = address.rsplit(":", 1)[0]
        self.bulk: BulkServer | None = None
        if bulk:
            self.bulk = BulkServer(
                self.host,
                self._bulk_request,
                port=bulk_port,
                ssl_context=None if tls is None else server_ssl_context(tls),
                max_connections=max(4, max_workers // 4),
            )

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> AggregatorServer:
        self._server.start()
        log.info("aggregator %s listening on %s", self.task_id, self.address)
        return self

    def finish(self) -> None:
        """Tell clients the task is over (their next poll gets STOP)."""
        with self._cv:
            self._finished = True
            self._cv.notify_all()

    def stop(self, grace: float = 1.0) -> None:
        self.finish()
        if self.bulk is not None:
            self.bulk.close()
        self._server.stop(grace).wait()

    # -- the Backend protocol -----------------------------------------------------------------
    def available_clients(self, round: int) -> list[int]:
        """The live members. Before the first round, block until ``min_clients`` checked in
        (or ``start_timeout`` passed with at least one); later, until ``quorum`` are live."""
        deadline = None if self.start_timeout is None else self._created + self.start_timeout
        warned = time.monotonic()
        with self._cv:
            while True:
                self._drop_silent()
                n = len(self.members)
                if self._started:
                    if n >= self.quorum:
                        return sorted(self.members)
                elif n >= self.min_clients or (deadline and time.monotonic() > deadline and n):
                    self._started = True
                    return sorted(self.members)
                if time.monotonic() - warned > 30:
                    log.info("round %d waits for clients: %d live", round, n)
                    warned = time.monotonic()
                self._cv.wait(timeout=self.poll_interval * 4)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        model, chunks = self._serialize(global_params, round, round - 1, plan.tensors)
        with self._cv:
            self._round, self._version = round, round - 1
            self._plan, self._model, self._chunks = plan, model, chunks
            self._config_json = json.dumps(plan.config)
            self._handed, self._results = set(), {}
            spare = [*self._buffers.values(), *self._free]  # at most one per planned client
            self._free, self._buffers = spare[: len(plan.clients)], {}
            self._round_started = time.monotonic()
            self._cv.notify_all()

    def collect(self) -> Iterator[ClientUpdate]:
        """Yield updates in client-id order as they arrive, skipping clients that vanished."""
        delivered = 0
        for cid in sorted(self._plan.clients):
            update = self._wait_for(cid)
            if update is None:
                continue
            if "error" not in update.extras:
                delivered += 1
            yield update
        if delivered < self.quorum:
            raise QuorumError(
                f"round {self._round}: {delivered} of {len(self._plan.clients)} clients returned "
                f"a valid update; the quorum is {self.quorum}"
            )

    def _wait_for(self, cid: int) -> ClientUpdate | None:
        with self._cv:
            while cid not in self._results:
                self._drop_silent()
                if cid not in self.members:
                    log.warning(
                        "round %d: client %d is gone; going on without it", self._round, cid
                    )
                    return None
                if self.round_timeout is not None and (
                    time.monotonic() - self._round_started > self.round_timeout
                ):
                    log.warning("round %d: client %d timed out", self._round, cid)
                    return None
                self._cv.wait(timeout=self.poll_interval * 4)
            return self._results[cid]

    # -- the async backend (FedAsync, FedBuff) --------------------------------------------------
    def publish(self, params: torch.Tensor, version: int) -> None:
        """Make ``version`` the model idle clients get; keep recent ones for stale uploads."""
        model, chunks = self._serialize(params, version + 1, version)
        with self._cv:
            self._versions[version] = (model, chunks, params.detach().clone())
            for old in [v for v in self._versions if v <= version - self.keep_versions]:
                del self._versions[old]
            self._round, self._version = version + 1, version
            self._model, self._chunks = model, chunks
            self._cv.notify_all()

    def next_update(self, timeout: float) -> ClientUpdate | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            with self._cv:
                self._drop_silent()
            return None

    def base(self, version: int) -> torch.Tensor:
        return self._versions[version][2]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    # -- RPCs -------------------------------------------------------------------------------
    def _handlers(self) -> grpc.GenericRpcHandler:
        """The generated service's handlers, but Download sends pre-serialised chunks."""
        h = {
            "CheckIn": grpc.unary_unary_rpc_method_handler(
                self.CheckIn, pb.CheckInRequest.FromString, pb.CheckInReply.SerializeToString
            ),
            "Poll": grpc.unary_unary_rpc_method_handler(
                self.Poll, pb.PollRequest.FromString, pb.Instruction.SerializeToString
            ),
            "Download": grpc.unary_stream_rpc_method_handler(
                self.Download, pb.DownloadRequest.FromString, bytes
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(  # raw chunks: data copied once
                self.Upload, None, pb.UploadReply.SerializeToString
            ),
        }
        return grpc.method_handlers_generic_handler("fedloom.v1.Aggregator", h)

    def CheckIn(self, request, context):  # noqa: N802 (gRPC's method names)
        cid = self._authorise(request, context)
        with self._cv:
            known = cid in self.members
            if known:
                self.members[cid].last_seen = time.monotonic()
            else:
                self.members[cid] = Member(
                    cid, int(request.num_samples), time.monotonic(), self._round + 1
                )
                log.info("client %d checked in (%d members)", cid, len(self.members))
            self._cv.notify_all()
        return pb.CheckInReply(
            accepted=True,
            seed=self.seed,
            spec_json=json.dumps(self.spec.to_json()),
            chunk_size=self.chunk_size,
            heartbeat_s=self.heartbeat_timeout / 3,
            duplicate=known,
            bulk_port=self.bulk.port if self.bulk is not None else 0,
        )

    def Poll(self, request, context):  # noqa: N802
        """Hand out work, or hold the call (long poll) until there is some, up to a second.

        Holding the call means a sampled client starts at once and idle clients cost no
        traffic; when most worker threads are already holding polls, answer WAIT at once."""
        cid = self._member(request, context)
        deadline = time.monotonic() + self.long_poll
        with self._cv:
            while True:
                ins = self._instruction(cid, request.busy)
                if ins is not None or request.busy or self._holding >= self._max_holding:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._holding += 1
                self._polling[cid] = self._polling.get(cid, 0) + 1
                try:
                    self._cv.wait(timeout=left)
                finally:
                    self._holding -= 1
                    self._polling[cid] -= 1
                    if cid in self.members:
                        self.members[cid].last_seen = time.monotonic()
        return ins or pb.Instruction(kind=pb.Instruction.WAIT, wait_s=self.poll_interval)

    def _instruction(self, cid: int, busy: bool):
        """TRAIN or STOP for ``cid`` now, or None (call with the lock held)."""
        if cid in self.members:
            self.members[cid].last_seen = time.monotonic()
        if self._finished:
            return pb.Instruction(kind=pb.Instruction.STOP, task_id=self.task_id)
        if self.mode == "async":
            todo = not busy and cid not in self._busy and bool(self._versions)
            if todo:
                self._busy.add(cid)
        else:
            todo = (
                not busy
                and cid in self._plan.clients
                and cid not in self._handed
                and cid not in self._results
            )
        if todo:
            self._handed.add(cid)
            return pb.Instruction(
                kind=pb.Instruction.TRAIN,
                round=self._round,
                version=self._version,
                config_json=self._config_json,
                task_id=self.task_id,
            )
        return None

    def Download(self, request, context):  # noqa: N802
        cid = self._member(request, context)
        try:
            _, chunks, rnd = self._published(request.round, request.version)
        except Refused as r:
            context.abort(r.code, r.reason)
        log.debug("client %d downloads round %d", cid, rnd)
        yield from chunks  # serialised once per version, sent as is to every client

    def _published(self, rnd: int, version: int) -> tuple[bytes, list[bytes], int]:
        """(wire bytes, Chunk messages, round) of the model a client asks for, if current."""
        with self._cv:
            if self.mode == "async" and version in self._versions:
                model, chunks, _ = self._versions[version]
                return model, chunks, self._round
            if (rnd, version) != (self._round, self._version):
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model of round {rnd} version {version} is not current "
                    f"(round {self._round}, version {self._version})",
                )
            return self._model, self._chunks, self._round

    def _serialize(
        self, params: torch.Tensor, rnd: int, version: int, extras: dict | None = None
    ) -> tuple[bytes, list]:
        """The model's wire bytes (with the plan's extra buffers) and Chunk messages, made once
        for all the clients of a version."""
        model = encode_bundle(params, self.spec, extras or {}, {"round": rnd, "version": version})
        chunks = encode_chunks(
            model, self.chunk_size, task_id=self.task_id, round=rnd, version=version
        )
        return model, list(chunks)

    def Upload(self, request_iterator, context):  # noqa: N802
        stream = iter(request_iterator)
        first = next(stream, None)
        if first is None:
            return pb.UploadReply(accepted=False, reason="empty stream: no chunk arrived")
        try:
            head = pb.Chunk.FromString(split_chunk(first)[0])
        except Exception as e:  # WireError, protobuf's DecodeError
            return pb.UploadReply(accepted=False, reason=f"malformed chunk: {e}")
        cid = self._member(head, context)  # authenticate before buffering anything
        refusal = self._admit(cid, head)
        if refusal is not None:
            return refusal
        try:
            _, data = join_chunks(itertools.chain([first], stream), self.max_update_bytes)
        except WireError as e:
            return self._reject(cid, head.round, str(e))
        return self._accept(cid, head, data)

    def _admit(self, cid: int, head) -> pb.UploadReply | None:
        """None if ``cid``'s upload for ``head``'s round and version is wanted, else the reply."""
        with self._cv:
            self.members[cid].last_seen = time.monotonic()
            if self.mode == "async":
                expected = cid in self._busy
                self._busy.discard(cid)
                stale = head.version not in self._versions
            else:
                expected = cid in self._plan.clients and cid not in self._results
                stale = (head.round, head.version) != (self._round, self._version)
        if stale or not expected:
            why = "stale round/version" if stale else "not asked for this round"
            return self._reject(cid, head.round, f"update refused: {why}", record=False)
        return None

    def _accept(self, cid: int, head, data: bytearray) -> pb.UploadReply:
        """Check an upload's bytes against the spec and hand the update to the round."""
        try:
            params, tensors, _ = decode_bundle(data, self.spec, copy=False)  # no second copy
            metrics = json.loads(head.metrics_json or "{}")
        except (WireError, ValueError) as e:
            return self._reject(cid, head.round, str(e))
        update = ClientUpdate(cid, params, int(head.num_samples), metrics, head.round, head.version)
        if tensors:
            update.extras["tensors"] = tensors
        self._deliver(update)
        return pb.UploadReply(accepted=True)

    def _receive_buffer(self, cid: int, n: int) -> bytearray:
        if self.mode == "sync":
            with self._cv:
                for i, buf in enumerate(self._free):
                    if len(buf) == n:
                        self._buffers[cid] = self._free.pop(i)
                        return self._buffers[cid]
                self._buffers[cid] = bytearray(n)
                return self._buffers[cid]
        return bytearray(n)

    def _bulk_request(self, conn, header: dict[str, Any]) -> None:
        """One transfer on the bulk channel, checked exactly as the gRPC calls are."""
        try:
            head = pb.Chunk(
                task_id=str(header.get("task_id", "")),
                client_id=str(header.get("client_id", "")),
                token=str(header.get("token", "")),
                round=int(header.get("round", 0)),
                version=int(header.get("version", 0)),
                num_samples=int(header.get("num_samples", 0)),
                metrics_json=str(header.get("metrics_json", "")),
                total_bytes=int(header.get("total_bytes", 0)),
            )
            cid = self._check(head)
            with self._cv:
                if cid not in self.members:
                    raise Refused(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
            op = header.get("op")
            if op == "download":
                model, _, rnd = self._published(head.round, head.version)
                log.debug("client %d downloads round %d (bulk)", cid, rnd)
                send_header(conn, {"ok": True, "total_bytes": len(model), "round": rnd})
                conn.sendall(model)
                return
            if op != "upload":
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unknown bulk op {op!r}")
        except (TypeError, ValueError) as e:
            send_header(conn, {"ok": False, "code": "INVALID_ARGUMENT", "reason": str(e)})
            return
        except Refused as r:
            send_header(conn, {"ok": False, "code": r.code.name, "reason": r.reason})
            return
        reply = self._admit(cid, head)
        if reply is None and not 0 <= head.total_bytes <= self.max_update_bytes:
            reason = f"stream announces {head.total_bytes} bytes; the limit is "
            reply = self._reject(cid, head.round, reason + str(self.max_update_bytes))
        if reply is not None:
            send_header(conn, {"ok": True, "accepted": False, "reason": reply.reason})
            return
        send_header(conn, {"ok": True, "go": True})
        data = self._receive_buffer(cid, head.total_bytes)
        try:
            recv_into(conn, memoryview(data))
        except (OSError, WireError) as e:  # the client may send it again (over gRPC)
            log.warning("round %d: bulk upload of client %d broken off: %s", head.round, cid, e)
            with self._cv:
                self._buffers.pop(cid, None)
                if self.mode == "async":
                    self._busy.add(cid)
            raise
        reply = self._accept(cid, head, data)
        send_header(conn, {"ok": True, "accepted": reply.accepted, "reason": reply.reason})

    def _deliver(self, update: ClientUpdate) -> None:
        if self.mode == "async":
            self._queue.put(update)
            return
        with self._cv:
            self._results[update.client_id] = update
            self._cv.notify_all()

    # -- helpers ----------------------------------------------------------------------------
    def _reject(self, cid: int, rnd: int, reason: str, record: bool = True) -> pb.UploadReply:
        log.warning("round %d: rejected update of client %d: %s", rnd, cid, reason)
        self.rejections.append((rnd, cid, reason))
        if record:
            self._deliver(ClientUpdate(cid, torch.empty(0), 0, {}, rnd, extras={"error": reason}))
        return pb.UploadReply(accepted=False, reason=reason)

    def _authorise(self, msg, context) -> int:
        try:
            return self._check(msg)
        except Refused as r:
            context.abort(r.code, r.reason)
            raise  # not reached: abort raises

    def _check(self, msg) -> int:
        """The client id of ``msg`` if its task and token are right, else :class:`Refused`."""
        if msg.task_id != self.task_id:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {msg.task_id!r} is not served here (this is {self.task_id!r})",
            )
        try:
            cid = int(msg.client_id)
        except ValueError:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"client id must be an integer, got {msg.client_id!r}",
            ) from None
        if self.tokens is not None:
            if cid not in self.tokens:
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"unknown client {cid}")
            if not hmac.compare_digest(msg.token.encode(), self.tokens[cid].encode()):
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"bad token for client {cid}")
        return cid

    def _member(self, msg, context) -> int:
        cid = self._authorise(msg, context)
        with self._cv:
            if cid not in self.members:
                context.abort(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
        return cid

    def _drop_silent(self) -> None:
        now = time.monotonic()
        for cid, m in list(self.members.items()):
            if now - m.last_seen > self.heartbeat_timeout and not self._polling.get(cid):
                del self.members[cid]
                self._busy.discard(cid)
                log.warning("client %d silent for %.0f s: dropped", cid, now - m.last_seen)
