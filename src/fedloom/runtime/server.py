"""The aggregator: a gRPC service that is also the round loop's backend.

:class:`Federation` runs unchanged; where the simulation trains clients in-process, this
backend hands each sampled client its work through ``Poll``, serves the model through
``Download`` and receives updates through ``Upload``. Updates are checked on arrival (token,
round, version, spec, NaN/Inf, metrics, sample count) and handed to the strategy in client-id
order, so a sync run aggregates exactly as the simulation does: same seed, bit-identical
parameters.

Membership follows AlphaMed's check-in: the aggregator starts once ``min_clients`` have
checked in (or ``start_timeout`` passes); a client that joins later is sampled from the next
round; a client silent for ``heartbeat_timeout`` is dropped. A client that checks in again
while a member (it restarted) is given its round's work again. A round closes when every
sampled client has answered, gone silent, or ``round_timeout`` passed; with fewer than
``quorum`` valid updates it raises :class:`QuorumError` before anything is aggregated, and the
loop retries or skips it (``Federation``'s ``short_round`` policy).

Hostile input is bounded everywhere: calls are authenticated from their metadata before a
worker thread is spent (:mod:`.gate`), every call has a deadline, one upload per client and
round is admitted (atomically), at most ``max_concurrent_uploads`` are received at once, and
each accepted update owns its receive buffer until the round that used it is over.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Collection, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from ..algorithms.base import RoundPlan
from ..errors import FedloomError, QuorumError, WireError
from ..params import ParamSpec
from ..update import ClientUpdate, parse_metrics
from ..wire import decode_bundle, encode_bundle
from .bulk import BulkServer, recv_into, send_header
from .fields import UNPARSABLE, bad_fields, bulk_head, parser
from .gate import Authenticator, Gate, Refused, Tally, Watchdog, client_of
from .proto import fedloom_pb2 as pb
from .proto import fedloom_pb2_grpc as pb_grpc
from .security import TLSConfig, server_credentials, server_ssl_context
from .transport import DEFAULT_CHUNK, GRPC_OPTIONS, encode_chunks, join_chunks, split_chunk

log = logging.getLogger("fedloom.server")

__all__ = ["AggregatorServer", "QuorumError", "Refused"]


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
        clients: the client ids that may join (``None``: any; say so in the log).
        min_clients: check-ins needed before the first round starts.
        start_timeout: seconds to wait for ``min_clients``; after it, start with those present
            (at least one). ``None`` waits for ever.
        quorum: valid updates a round needs to count; fewer raises :class:`QuorumError`.
        heartbeat_timeout: a client silent this long is dropped.
        round_timeout: seconds a round waits for its clients (and, later in the run, for
            ``quorum`` live clients) before closing with what it has.
        tokens: client id -> token; when given, every call must carry its client's token, and
            every id in ``clients`` must have one.
        tls: server certificate and key (and client CA for mutual TLS).
        chunk_size: bytes per streamed chunk.
        max_update_bytes: the largest upload accepted (default: room for the model and
            ``max_update_extras`` buffers of its size, such as SCAFFOLD's control variate,
            plus 1 MiB).
        max_samples: the largest sample count a client may declare at check-in; the count it
            declared there bounds the weight of each of its updates.
        max_concurrent_uploads: uploads received at once; more wait for a slot, so receive
            memory stays under ``max_concurrent_uploads * max_update_bytes``.
        transfer_timeout: seconds one model transfer may take on either channel (default
            60 s plus one second per MiB of ``max_update_bytes``).
        async_max_share: in async mode, the most one client may contribute of the recent
            updates, as a multiple of its fair share (1 / live clients); past it, it waits.
            Must be > 1: at exactly 1, every client can hold its fair share while none is
            training, and then none may be given work again.
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
        clients: Collection[int] | None = None,
        min_clients: int = 1,
        start_timeout: float | None = None,
        quorum: int = 1,
        heartbeat_timeout: float = 30.0,
        round_timeout: float | None = 600.0,
        tokens: dict[int, str] | None = None,
        tls: TLSConfig | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        max_update_bytes: int | None = None,
        max_samples: int = 1 << 40,
        max_concurrent_uploads: int = 16,
        transfer_timeout: float | None = None,
        async_max_share: float = 2.0,
        poll_interval: float = 0.05,
        long_poll: float = 1.0,
        max_workers: int = 256,
        mode: str = "sync",
        keep_versions: int = 21,
        bulk: bool = True,
        bulk_port: int = 0,
        max_update_extras: int = 2,
    ):
        if min_clients < 1 or quorum < 1 or max_concurrent_uploads < 1 or max_samples < 1:
            raise ValueError(
                "min_clients, quorum, max_concurrent_uploads, max_samples must be >= 1"
            )
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if not async_max_share > 1:  # at exactly 1 every client can be at its cap, idle: a wedge
            raise ValueError(f"async_max_share must be > 1, got {async_max_share}")
        self.mode, self.keep_versions = mode, keep_versions
        self.spec, self.task_id, self.seed = spec, task_id, seed
        self.min_clients, self.start_timeout, self.quorum = min_clients, start_timeout, quorum
        self.heartbeat_timeout, self.round_timeout = heartbeat_timeout, round_timeout
        self.chunk_size, self.poll_interval, self.long_poll = chunk_size, poll_interval, long_poll
        self.max_samples, self.async_max_share = max_samples, async_max_share
        room = spec.nbytes * (1 + max(0, max_update_extras)) + (1 << 20)
        self.max_update_bytes = max_update_bytes or room
        self.transfer_timeout = transfer_timeout or 60.0 + self.max_update_bytes / (1 << 20)
        tokens = {int(k): v for k, v in tokens.items()} if tokens else None
        ids: Collection[int] = clients if clients is not None else tokens or range(1 << 62)
        self.auth = Authenticator(task_id, ids, tokens)
        self.tally = Tally()
        self.watchdog = Watchdog(self.tally)
        self.members: dict[int, Member] = {}
        self.rejections: list[tuple[int, int, str]] = []
        self._cv = threading.Condition()
        self._holding, self._max_holding = 0, max(0, max_workers - 32)
        self._polling: dict[int, int] = {}  # clients whose poll we are holding: alive
        self._upload_slots = threading.BoundedSemaphore(max_concurrent_uploads)
        self._round, self._version = 0, 0
        self._plan = RoundPlan([])
        self._model, self._chunks = b"", []  # this version's wire bytes and Chunk messages
        self._config_json = "{}"
        self._round_started = time.monotonic()
        self._handed: set[int] = set()  # sync: clients given this round's work
        self._receiving: set[int] = set()  # clients with an upload admitted and in flight
        self._results: dict[int, ClientUpdate] = {}
        # sync mode: bulk receive buffers are reused; each belongs to one upload while it is
        # received, then to its round's results until the round is over, then to the pool
        self._held: list[bytearray] = []
        self._free: list[bytearray] = []
        self._versions: dict[int, tuple[bytes, list[bytes], torch.Tensor]] = {}
        self._busy: set[int] = set()  # async: clients training
        self._recent: collections.deque[int] = collections.deque(maxlen=4096)  # async accepts
        self._queue: queue.Queue[ClientUpdate] = queue.Queue()
        self._finished = self._started = False
        self._created = time.monotonic()
        limits = {"CheckIn": 2, "Poll": 3, "Download": 2, "Upload": 2}
        deadlines = {
            "CheckIn": 30.0,
            "Poll": long_poll + 30.0,
            "Download": self.transfer_timeout,
            "Upload": self.transfer_timeout,
        }
        gate = Gate(self.auth, self.tally, self.watchdog, deadlines, limits)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[gate],
            options=[
                *GRPC_OPTIONS,
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
                ("grpc.server_handshake_timeout_ms", 10_000),  # held raw sockets: 10 s
                ("grpc.max_connection_idle_ms", 600_000),  # clients poll; idle ones are not
            ],
            maximum_concurrent_rpcs=max_workers,
        )
        self._server.add_generic_rpc_handlers((self._handlers(),))
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as e:  # grpc raises RuntimeError when it cannot bind
            raise FedloomError(f"cannot listen on {address}: {e}") from None
        if self.port == 0:
            raise FedloomError(f"cannot listen on {address}: the address is in use or invalid")
        self.host = address.rsplit(":", 1)[0]
        self.bulk: BulkServer | None = None
        if bulk:
            self.bulk = BulkServer(
                self.host,
                self._bulk_request,
                port=bulk_port,
                ssl_context=None if tls is None else server_ssl_context(tls),
                max_connections=max(4, max_workers // 4),
                timeout=self.transfer_timeout,
                on_drop=lambda e: self.tally.count("bulk_dropped", f"bulk connection: {e}"),
            )
        if tokens is None:
            who = "any client id" if clients is None else f"client ids {_ids(ids)}"
            log.warning("unauthenticated run: whoever reaches this server may join as %s", who)

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
        self.watchdog.close()

    # -- the Backend protocol -----------------------------------------------------------------
    def available_clients(self, round: int) -> list[int]:
        """The live members. Before the first round, block until ``min_clients`` checked in
        (or ``start_timeout`` passed with at least one); later, until ``quorum`` are live,
        at most ``round_timeout`` (then :class:`QuorumError`)."""
        t0 = time.monotonic()
        deadline = None if self.start_timeout is None else self._created + self.start_timeout
        logged = t0
        with self._cv:
            while True:
                self._drop_silent()
                n = len(self.members)
                if self._started:
                    if n >= self.quorum:
                        return sorted(self.members)
                    if (
                        self.round_timeout is not None
                        and time.monotonic() - t0 > self.round_timeout
                    ):
                        raise QuorumError(
                            f"round {round}: {n} live clients for {self.round_timeout:.0f} s; "
                            f"the quorum is {self.quorum}"
                        )
                elif n >= self.min_clients or (deadline and time.monotonic() > deadline and n):
                    self._started = True
                    return sorted(self.members)
                if time.monotonic() - logged > 10:
                    need = self.quorum if self._started else self.min_clients
                    log.info("round %d waits for clients to check in: %d of %d", round, n, need)
                    logged = time.monotonic()
                self._cv.wait(timeout=self.poll_interval * 4)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        model, chunks = self._serialize(global_params, round, round - 1, plan.tensors)
        with self._cv:
            self._round, self._version = round, round - 1
            self._plan, self._model, self._chunks = plan, model, chunks
            self._config_json = json.dumps(plan.to_wire())
            self._handed, self._results = set(), {}
            # the last round's updates are aggregated: their buffers are free (one per client)
            self._free = [*self._held, *self._free][: len(plan.clients)]
            self._held = []
            self._round_started = time.monotonic()
            self._cv.notify_all()

    def collect(self) -> Iterator[ClientUpdate]:
        """Yield updates in client-id order. Nothing is yielded until ``quorum`` valid ones
        arrived, so a short round raises :class:`QuorumError` before aggregation starts."""
        planned = sorted(self._plan.clients)
        with self._cv:
            while (
                self._valid() < self.quorum
                and any(self._pending(c) for c in planned)
                and not self._timed_out()
            ):
                self._wait_logged(planned)
            if self._valid() < self.quorum:
                raise QuorumError(
                    f"round {self._round}: {self._valid()} of {len(planned)} clients returned "
                    f"a valid update; the quorum is {self.quorum}"
                )
        for cid in planned:
            with self._cv:
                while self._pending(cid) and not self._timed_out():
                    self._wait_logged(planned)
                update = self._results.get(cid)
            if update is None:
                why = "timed out" if cid in self.members else "is gone"
                log.warning("round %d: client %d %s; going on without it", self._round, cid, why)
                continue
            yield update

    def round_stats(self) -> dict[str, Any]:
        """Refusals since the last round, by kind (unauthenticated calls, duplicates, ...)."""
        refused = self.tally.take_round()
        return {"refused": refused} if refused else {}

    def _valid(self) -> int:
        return sum(1 for u in self._results.values() if "error" not in u.extras)

    def _pending(self, cid: int) -> bool:
        """Whether ``cid``'s answer for the round may still come (call with the lock held)."""
        return cid not in self._results and cid in self.members

    def _timed_out(self) -> bool:
        return self.round_timeout is not None and (
            time.monotonic() - self._round_started > self.round_timeout
        )

    def _wait_logged(self, planned: list[int]) -> None:
        """Wait a little; every 10 s say which clients the round waits for."""
        elapsed = time.monotonic() - self._round_started
        self._cv.wait(timeout=self.poll_interval * 4)
        self._drop_silent()
        now = time.monotonic() - self._round_started
        if int(now / 10) > int(elapsed / 10):
            waiting = [c for c in planned if self._pending(c)]
            closes = (
                ""
                if self.round_timeout is None
                else f"; closes in {self.round_timeout - now:.0f} s"
            )
            log.info(
                "round %d waits for clients %s (%d of %d in, quorum %d%s)",
                self._round,
                _ids(waiting),
                len(self._results),
                len(planned),
                self.quorum,
                closes,
            )

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

    def base(self, version: int) -> torch.Tensor | None:
        """The model of ``version``, or None once it is too old to be kept."""
        with self._cv:
            kept = self._versions.get(version)
        return None if kept is None else kept[2]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    # -- RPCs -------------------------------------------------------------------------------
    def _handlers(self) -> grpc.GenericRpcHandler:
        """The generated service's handlers, but models move as pre-serialised chunks, and a
        body that does not parse reaches the handler as :data:`UNPARSABLE`."""
        h = {
            "CheckIn": grpc.unary_unary_rpc_method_handler(
                self.CheckIn, parser(pb.CheckInRequest), pb.CheckInReply.SerializeToString
            ),
            "Poll": grpc.unary_unary_rpc_method_handler(
                self.Poll, parser(pb.PollRequest), pb.Instruction.SerializeToString
            ),
            "Download": grpc.unary_stream_rpc_method_handler(
                self.Download, parser(pb.DownloadRequest), bytes
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(  # raw chunks: data copied once
                self.Upload, None, pb.UploadReply.SerializeToString
            ),
        }
        return grpc.method_handlers_generic_handler("fedloom.v1.Aggregator", h)

    def CheckIn(self, request, context):  # noqa: N802 (gRPC's method names)
        cid = self._same_client(request, context)
        n = request.num_samples
        if not 1 <= n <= self.max_samples:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_samples",
                f"client {cid}: num_samples {n} is not in [1, {self.max_samples}]",
            )
        with self._cv:
            member = self.members.get(cid)
            if member is None:
                self.members[cid] = Member(cid, n, time.monotonic(), self._round + 1)
                log.info("client %d checked in (%d members)", cid, len(self.members))
            else:  # a client checks in once per process: it restarted, so its work is lost
                member.last_seen, member.num_samples = time.monotonic(), n
                if cid not in self._results:
                    self._handed.discard(cid)
                    self._busy.discard(cid)
                log.info(
                    "client %d checked in again (restarted?): its round's work is re-sent", cid
                )
            self._cv.notify_all()
        return pb.CheckInReply(
            accepted=True,
            seed=self.seed,
            spec_json=json.dumps(self.spec.to_json()),
            chunk_size=self.chunk_size,
            heartbeat_s=self.heartbeat_timeout / 3,
            duplicate=member is not None,
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
        if busy:
            return None
        if self.mode == "async":
            todo = cid not in self._busy and bool(self._versions) and self._within_share(cid)
            if todo:
                self._busy.add(cid)
        else:
            todo = (
                cid in self._plan.clients and cid not in self._handed and cid not in self._results
            )
            if todo:
                self._handed.add(cid)
        if not todo:
            return None
        return pb.Instruction(
            kind=pb.Instruction.TRAIN,
            round=self._round,
            version=self._version,
            config_json=self._config_json,
            task_id=self.task_id,
        )

    def _within_share(self, cid: int) -> bool:
        """Async: whether ``cid`` holds less than ``async_max_share`` times its fair share of
        the last ``2 x live`` accepted updates (so one fast or lazy client cannot take over)."""
        live = max(1, len(self.members))
        window = list(itertools.islice(reversed(self._recent), 2 * live))
        if len(window) < 2 * live:
            return True
        return window.count(cid) < max(1, math.ceil(self.async_max_share * len(window) / live))

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
        cid = self._member(None, context, stream=True)  # the gate checked the metadata
        stream = iter(request_iterator)
        try:
            first = next(stream, None)
            if first is None:
                return self._malformed(cid, "empty stream: no chunk arrived")
            try:
                head = pb.Chunk.FromString(split_chunk(first)[0])
            except (WireError, DecodeError) as e:
                return self._malformed(cid, f"malformed chunk: {e}")
            if head.client_id != str(cid) or head.task_id != self.task_id:
                return self._malformed(cid, "the chunk names another client or task")
            refusal = self._admit(cid, head)
            if refusal is not None:
                return refusal
            try:
                with self._upload_slots:
                    _, data = join_chunks(itertools.chain([first], stream), self.max_update_bytes)
                return self._accept(cid, head, data)
            except WireError as e:
                return self._reject(cid, head.round, str(e))
            finally:
                with self._cv:
                    self._receiving.discard(cid)
        except grpc.RpcError:  # the stream broke off or ran past its deadline
            return pb.UploadReply(accepted=False, reason="stream broken off")

    def _admit(self, cid: int, head) -> pb.UploadReply | None:
        """None if ``cid``'s upload for ``head``'s round and version is wanted: it is then
        marked in flight (the caller unmarks it), so a second one is refused. Else the reply."""
        why = bad_fields(head)
        if why is not None:
            return self._reject(cid, head.round, why, record=False)
        with self._cv:
            member = self.members[cid]
            member.last_seen = time.monotonic()
            if cid in self._receiving or cid in self._results:
                duplicate = True
            else:
                duplicate = False
                if self.mode == "async":
                    expected = cid in self._busy
                    self._busy.discard(cid)
                    stale = head.version not in self._versions
                else:
                    expected = cid in self._plan.clients
                    stale = (head.round, head.version) != (self._round, self._version)
                over = head.num_samples > member.num_samples
                if expected and not stale and not over:
                    self._receiving.add(cid)
                    return None
        if duplicate:
            self.tally.count("duplicate", f"client {cid}: a second upload for round {head.round}")
            return pb.UploadReply(
                accepted=False,
                reason=f"duplicate: an update of client {cid} for this round is already "
                "being received or was accepted",
            )
        if stale or not expected:
            why = "stale round/version" if stale else "not asked for this round"
            return self._reject(cid, head.round, f"update refused: {why}", record=False)
        return self._reject(
            cid,
            head.round,
            f"num_samples {head.num_samples} exceeds the {member.num_samples} declared at check-in",
        )

    def _accept(self, cid: int, head, data: bytearray) -> pb.UploadReply:
        """Check an upload's bytes and metrics, then file it under its round, if still open."""
        try:
            params, tensors, _ = decode_bundle(data, self.spec, copy=False)  # no second copy
            metrics = parse_metrics(head.metrics_json)
        except (WireError, ValueError) as e:
            self._release(data)
            return self._reject(cid, head.round, str(e))
        update = ClientUpdate(cid, params, int(head.num_samples), metrics, head.round, head.version)
        if tensors:
            update.extras["tensors"] = tensors
        if self.mode == "async":
            with self._cv:  # the share window sees accepts in the order the loop gets them
                self._recent.append(cid)
                self._queue.put(update)
            return pb.UploadReply(accepted=True)
        with self._cv:
            if (head.round, head.version) != (self._round, self._version):
                late = True
            else:
                late = False
                self._results[cid] = update
                self._held.append(data)
                self._cv.notify_all()
        if late:  # the round closed while the bytes came in
            self._release(data)
            return self._reject(cid, head.round, "update refused: its round closed", record=False)
        return pb.UploadReply(accepted=True)

    def _receive_buffer(self, n: int) -> bytearray:
        if self.mode == "sync":
            with self._cv:
                for i, buf in enumerate(self._free):
                    if len(buf) == n:
                        return self._free.pop(i)
        return bytearray(n)

    def _release(self, data: bytearray) -> None:
        if self.mode == "sync":
            with self._cv:
                self._free.append(data)

    def _bulk_request(self, conn, header: dict[str, Any]) -> None:
        """One transfer on the bulk channel, checked exactly as the gRPC calls are."""
        try:
            head, op = bulk_head(header)
            cid = self.auth.check(head.task_id, head.client_id, head.token)
            with self._cv:
                if cid not in self.members:
                    raise Refused(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
            if op == "download":
                model, _, rnd = self._published(head.round, head.version)
                log.debug("client %d downloads round %d (bulk)", cid, rnd)
                send_header(conn, {"ok": True, "total_bytes": len(model), "round": rnd})
                conn.settimeout(self.transfer_timeout)  # for the whole sendall
                conn.sendall(model)
                return
        except Refused as r:
            if r.code != grpc.StatusCode.FAILED_PRECONDITION:
                self.tally.count(r.kind, f"bulk: {r.reason}")
            send_header(conn, {"ok": False, "code": r.code.name, "reason": r.reason})
            return
        reply = self._admit(cid, head)
        if reply is None and not 0 <= head.total_bytes <= self.max_update_bytes:
            with self._cv:
                self._receiving.discard(cid)
            reason = f"stream announces {head.total_bytes} bytes; the limit is "
            reply = self._reject(cid, head.round, reason + str(self.max_update_bytes))
        if reply is not None:
            send_header(conn, {"ok": True, "accepted": False, "reason": reply.reason})
            return
        try:
            with self._upload_slots:
                send_header(conn, {"ok": True, "go": True})
                data = self._receive_buffer(head.total_bytes)
                try:
                    recv_into(conn, memoryview(data), time.monotonic() + self.transfer_timeout)
                except (OSError, WireError) as e:  # the client may send it again (over gRPC)
                    log.warning(
                        "round %d: bulk upload of client %d broken off: %s", head.round, cid, e
                    )
                    self._release(data)
                    with self._cv:
                        if self.mode == "async":
                            self._busy.add(cid)
                    raise
            reply = self._accept(cid, head, data)
        finally:
            with self._cv:
                self._receiving.discard(cid)
        send_header(conn, {"ok": True, "accepted": reply.accepted, "reason": reply.reason})

    # -- helpers ----------------------------------------------------------------------------
    def _reject(self, cid: int, rnd: int, reason: str, record: bool = True) -> pb.UploadReply:
        """Refuse an upload; ``record`` files it as the client's (rejected) update of the
        round, so the round counts it and stops waiting for the client."""
        log.warning("round %d: rejected update of client %d: %s", rnd, cid, reason)
        self.rejections.append((rnd, cid, reason))
        if record:
            error = ClientUpdate(cid, torch.empty(0), 0, {}, rnd, extras={"error": reason})
            if self.mode == "async":
                self._queue.put(error)
            else:
                with self._cv:
                    if rnd == self._round and cid in self._plan.clients:
                        self._results.setdefault(cid, error)
                        self._cv.notify_all()
        return pb.UploadReply(accepted=False, reason=reason)

    def _malformed(self, cid: int, reason: str) -> pb.UploadReply:
        self.tally.count("malformed", f"client {cid}: {reason}")
        return pb.UploadReply(accepted=False, reason=reason)

    def _abort(self, context, code: grpc.StatusCode, kind: str, reason: str) -> None:
        self.tally.count(kind, reason)
        context.abort(code, reason)

    def _same_client(self, msg, context) -> int:
        """The authenticated client id, which the message must name as well."""
        cid = client_of(context)
        if msg is UNPARSABLE:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"client {cid}: the request is not a valid message",
            )
        if msg.client_id != str(cid) or msg.task_id != self.task_id:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"client {cid}: the message names another client or task",
            )
        return cid

    def _member(self, msg, context, stream: bool = False) -> int:
        """The checked-in client making this call (a stream's header is checked later)."""
        cid = client_of(context) if stream else self._same_client(msg, context)
        with self._cv:
            if cid not in self.members:
                context.abort(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
        return cid

    def _drop_silent(self) -> None:
        now = time.monotonic()
        for cid, m in list(self.members.items()):
            if now - m.last_seen > self.heartbeat_timeout and not self._polling.get(cid):
                if cid in self._receiving:
                    continue  # an upload under way is alive (its deadline bounds it)
                del self.members[cid]
                self._busy.discard(cid)
                log.warning("client %d silent for %.0f s: dropped", cid, now - m.last_seen)


def _ids(ids: Collection[int]) -> str:
    if isinstance(ids, range):
        return f"[{ids.start}, {ids.stop})"
    shown = sorted(ids)
    return f"{shown[:12]}{' ...' if len(shown) > 12 else ''}"
