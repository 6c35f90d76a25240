"""The aggregator: a gRPC service that is also the round loop's backend.

:class:`Federation` runs unchanged; where the simulation trains clients in-process, this
backend hands each sampled client its work through ``Poll``, serves the model through
``Download`` (or the bulk port) and receives updates through ``Upload``. It is composed of
parts with one job each, sharing one lock:

- :class:`~.membership.Membership`: check-ins, heartbeats, the wait for enough clients;
- :class:`~.publish.Publisher`: each model version serialised once, recent ones kept;
- :class:`~.uploads.Uploads`: admission and checks of updates on either channel;
- :class:`~.service.AggregatorService`: the gRPC calls and bulk requests, answered from these;
- a :class:`~.rounds.RoundService`, chosen once by ``mode``: :class:`~.sync_round.SyncRounds`
  or :class:`~.async_round.AsyncRounds` (who gets work, where an accepted update goes).

Hostile input is bounded everywhere: calls are authenticated from their metadata before a
worker thread is spent (:mod:`.gate`), every call has a deadline, one upload per client and
round is admitted (atomically), at most ``max_concurrent_uploads`` are received at once, and
each accepted update owns its receive buffer until the round that used it is over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator
from concurrent import futures
from typing import Any

import grpc
import torch

from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..compression.link import Compression
from ..errors import FedloomError, QuorumError
from ..params import ParamSpec
from ..update import ClientUpdate
from .async_round import AsyncRounds
from .bulk import BulkServer
from .gate import Authenticator, Gate, Refused, Tally, Watchdog
from .membership import Member, Membership, format_ids
from .publish import Publisher
from .rounds import RoundService
from .secagg_round import SecAggRounds, SecAggSettings
from .security import TLSConfig, server_credentials, server_ssl_context
from .service import AggregatorService
from .sync_round import SyncRounds
from .transport import DEFAULT_CHUNK, GRPC_OPTIONS
from .uploads import Uploads

log = logging.getLogger("fedloom.server")

__all__ = ["AggregatorServer", "Member", "QuorumError", "Refused"]


class AggregatorServer(BackendBase):
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
        mode: ``"sync"`` (rounds; :class:`SyncRounds`) or ``"async"`` (versions;
            :class:`AsyncRounds`); it picks the round service once, here.
        keep_versions: async: how many recent versions stale uploads may still name.
        secagg: run sync rounds under secure aggregation (SecAgg+, :class:`SecAggRounds`):
            clients send masked deltas and the aggregator learns only their sum.
        compression: the run's chains (``[compression]``): models are published as the down
            chain's packets and uploads decoded with the up chain; ``round_stats`` then
            reports the packet bytes served and received in that direction.
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
        secagg: SecAggSettings | None = None,
        compression: Compression | None = None,
    ):
        if min_clients < 1 or quorum < 1 or max_concurrent_uploads < 1 or max_samples < 1:
            raise ValueError(
                "min_clients, quorum, max_concurrent_uploads, max_samples must be >= 1"
            )
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if secagg is not None and compression is not None and compression.up is not None:
            raise ValueError("secure aggregation quantises the uploads itself: no up chain")
        if secagg is not None and mode != "sync":
            raise ValueError("secure aggregation runs synchronous rounds only (mode = 'sync')")
        if not async_max_share > 1:  # at exactly 1 every client can be at its cap, idle: a wedge
            raise ValueError(f"async_max_share must be > 1, got {async_max_share}")
        self.spec, self.task_id, self.seed = spec, task_id, seed
        room = spec.nbytes * (1 + max(0, max_update_extras)) + (1 << 20)
        self.max_update_bytes = max_update_bytes or room
        self.transfer_timeout = transfer_timeout or 60.0 + self.max_update_bytes / (1 << 20)
        tokens = {int(k): v for k, v in tokens.items()} if tokens else None
        ids: Collection[int] = clients if clients is not None else tokens or range(1 << 62)
        self.auth = Authenticator(task_id, ids, tokens)
        self.tally = Tally()
        self.watchdog = Watchdog(self.tally)
        self._cv = threading.Condition()  # the one lock of the aggregator's state
        self.publisher = Publisher(spec, task_id, chunk_size, keep_versions, compression)
        self.membership = Membership(
            self._cv,
            min_clients=min_clients,
            start_timeout=start_timeout,
            quorum=quorum,
            heartbeat_timeout=heartbeat_timeout,
            round_timeout=round_timeout,
            poll_interval=poll_interval,
            on_drop=lambda cid: self.rounds.dropped(cid),
        )
        self.members = self.membership.members  # published: who is in
        self.secagg: SecAggRounds | None = None
        if secagg is not None:
            self.secagg = SecAggRounds(
                self._cv,
                self.publisher,
                self.membership,
                self.tally,
                secagg,
                vector_length=spec.numel,
                graph_seed=seed,
                quorum=quorum,
                round_timeout=round_timeout,
                poll_interval=poll_interval,
            )
        self.rounds: RoundService = (
            AsyncRounds(self._cv, self.publisher, self.membership, max_share=async_max_share)
            if mode == "async"
            else self.secagg
            if self.secagg is not None
            else SyncRounds(
                self._cv,
                self.publisher,
                self.membership,
                quorum=quorum,
                round_timeout=round_timeout,
                poll_interval=poll_interval,
            )
        )
        self.uploads = Uploads(
            self._cv,
            spec,
            task_id,
            self.membership,
            self.rounds,
            self.tally,
            max_update_bytes=self.max_update_bytes,
            max_concurrent=max_concurrent_uploads,
            transfer_timeout=self.transfer_timeout,
            publisher=self.publisher,
            compression=compression,
        )
        self.rejections = self.uploads.rejections  # (round, client, reason) of each refusal
        self.service = AggregatorService(
            self._cv,
            spec,
            task_id,
            seed,
            auth=self.auth,
            tally=self.tally,
            membership=self.membership,
            publisher=self.publisher,
            rounds=self.rounds,
            uploads=self.uploads,
            chunk_size=chunk_size,
            heartbeat_timeout=heartbeat_timeout,
            max_samples=max_samples,
            long_poll=long_poll,
            poll_interval=poll_interval,
            max_holding=max(0, max_workers - 32),
            transfer_timeout=self.transfer_timeout,
            secagg=self.secagg,
        )
        self._server = self._grpc_server(address, tls, long_poll, max_workers)
        self.host = address.rsplit(":", 1)[0]
        self.bulk: BulkServer | None = None
        if bulk:
            self.bulk = BulkServer(
                self.host,
                self.service.bulk_request,
                port=bulk_port,
                ssl_context=None if tls is None else server_ssl_context(tls),
                max_connections=max(4, max_workers // 4),
                timeout=self.transfer_timeout,
                on_drop=lambda e: self.tally.count("bulk_dropped", f"bulk connection: {e}"),
            )
            self.service.bulk_port = self.bulk.port
        if tokens is None:
            who = "any client id" if clients is None else f"client ids {format_ids(ids)}"
            log.warning("unauthenticated run: whoever reaches this server may join as %s", who)

    def _grpc_server(
        self, address: str, tls: TLSConfig | None, long_poll: float, max_workers: int
    ) -> Any:
        """The gRPC server behind the :class:`Gate`, bound to ``address`` (sets ``port``)."""
        limits = {"CheckIn": 2, "Poll": 3, "Download": 2, "Upload": 2, "SecAgg": 2}
        deadlines = {
            "CheckIn": 30.0,
            "Poll": long_poll + 30.0,
            "Download": self.transfer_timeout,
            "Upload": self.transfer_timeout,
            "SecAgg": long_poll + 30.0,
        }
        gate = Gate(self.auth, self.tally, self.watchdog, deadlines, limits)
        server = grpc.server(
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
        server.add_generic_rpc_handlers((self.service.handlers(),))
        try:
            if tls is None:
                self.port: int = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as e:  # grpc raises RuntimeError when it cannot bind
            raise FedloomError(f"cannot listen on {address}: {e}") from None
        if self.port == 0:
            raise FedloomError(f"cannot listen on {address}: the address is in use or invalid")
        return server

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
            self.service.finished = True
            self._cv.notify_all()

    def stop(self, grace: float = 1.0) -> None:
        self.finish()
        if self.bulk is not None:
            self.bulk.close()
        self._server.stop(grace).wait()
        self.watchdog.close()

    # -- the Backend protocols (sync and async), answered by the parts ------------------------
    def available_clients(self, round: int) -> list[int]:
        return self.membership.wait_for_clients(round)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self.rounds.distribute(round, plan, global_params)

    def collect(self) -> Iterator[ClientUpdate]:
        return self.rounds.collect()

    def publish(self, params: torch.Tensor, version: int) -> None:
        self.rounds.publish(params, version)

    def next_update(self, timeout: float) -> ClientUpdate | None:
        return self.rounds.next_update(timeout)

    def base(self, version: int) -> torch.Tensor | None:
        return self.rounds.base(version)

    def round_stats(self) -> dict[str, Any]:
        """Refusals since the last round, by kind (unauthenticated calls, duplicates, ...),
        and in a compressed direction the packet bytes that moved (they replace the loop's
        wire-format sizes)."""
        refused = self.tally.take_round()
        with self._cv:
            moved = {**self.publisher.take_sent(), **self.uploads.take_received()}
        return {**moved, "refused": refused} if refused else moved

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
