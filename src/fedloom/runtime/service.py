"""The aggregator's calls: gRPC's ``CheckIn``, ``Poll``, ``Download``, ``Upload``, ``SecAgg``
(secure rounds), and the bulk port's requests, each checked and answered from the parts
(:mod:`.membership`, :mod:`.publish`, :mod:`.uploads`, the round service).

Calls reach here authenticated by the :class:`~.gate.Gate` (the bulk port authenticates its
header here); each handler further checks that the message names its caller and that the
caller has checked in. A body that does not parse arrives as :data:`~.fields.UNPARSABLE` and
is refused as one counted ``malformed`` call.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from ..params import ParamSpec
from .bulk import send_header
from .fields import UNPARSABLE, bulk_head, parser
from .gate import Authenticator, Refused, Tally, client_of
from .membership import Membership
from .proto import fedloom_pb2 as pb
from .publish import Publisher
from .rounds import RoundService
from .secagg_round import SecAggRounds
from .uploads import Uploads

log = logging.getLogger("fedloom.server")


class AggregatorService:
    """The handlers of the aggregator's calls; ``finished`` makes every poll answer STOP.

    ``max_holding`` bounds the polls held at once (long poll), so held polls never take all of
    gRPC's worker threads."""

    def __init__(
        self,
        cv: threading.Condition,
        spec: ParamSpec,
        task_id: str,
        seed: int,
        *,
        auth: Authenticator,
        tally: Tally,
        membership: Membership,
        publisher: Publisher,
        rounds: RoundService,
        uploads: Uploads,
        chunk_size: int,
        heartbeat_timeout: float,
        max_samples: int,
        long_poll: float,
        poll_interval: float,
        max_holding: int,
        transfer_timeout: float,
        secagg: SecAggRounds | None = None,
    ):
        self.cv, self.spec, self.task_id, self.seed = cv, spec, task_id, seed
        self.auth, self.tally, self.membership = auth, tally, membership
        self.publisher, self.rounds, self.uploads = publisher, rounds, uploads
        self.chunk_size, self.heartbeat_timeout = chunk_size, heartbeat_timeout
        self.max_samples, self.long_poll, self.poll_interval = max_samples, long_poll, poll_interval
        self.transfer_timeout = transfer_timeout
        self.secagg = secagg  # the round service, when rounds are securely aggregated
        self.bulk_port = 0  # offered at check-in once the bulk port is open
        self.finished = False
        self._holding, self._max_holding = 0, max_holding

    # -- RPCs -------------------------------------------------------------------------------
    def handlers(self) -> Any:
        """The service's handlers; models move as pre-serialised chunks, and a body that does
        not parse reaches the handler as :data:`UNPARSABLE`."""
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
            "SecAgg": grpc.unary_unary_rpc_method_handler(
                self.SecAgg, parser(pb.SecAggRequest), pb.SecAggReply.SerializeToString
            ),
        }
        return grpc.method_handlers_generic_handler("fedloom.v1.Aggregator", h)

    def CheckIn(self, request: Any, context: Any) -> pb.CheckInReply:
        cid = self._same_client(request, context)
        n = request.num_samples
        if not 1 <= n <= self.max_samples:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_samples",
                f"client {cid}: num_samples {n} is not in [1, {self.max_samples}]",
            )
        with self.cv:
            again = self.membership.check_in(cid, n, self.publisher.current.round)
            if again:
                self.rounds.restarted(cid)
        return pb.CheckInReply(
            accepted=True,
            seed=self.seed,
            spec_json=json.dumps(self.spec.to_json()),
            chunk_size=self.chunk_size,
            heartbeat_s=self.heartbeat_timeout / 3,
            duplicate=again,
            bulk_port=self.bulk_port,
        )

    def Poll(self, request: Any, context: Any) -> pb.Instruction:
        """Hand out work, or hold the call (long poll) until there is some, up to a second.

        Holding the call means a sampled client starts at once and idle clients cost no
        traffic; when most worker threads are already holding polls, answer WAIT at once."""
        cid = self._member(request, context)
        deadline = time.monotonic() + self.long_poll
        with self.cv:
            while True:
                ins = self.instruction(cid, request.busy)
                if ins is not None or request.busy or self._holding >= self._max_holding:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._holding += 1
                try:
                    with self.membership.holding_poll(cid):
                        self.cv.wait(timeout=left)
                finally:
                    self._holding -= 1
        return ins or pb.Instruction(kind=pb.Instruction.WAIT, wait_s=self.poll_interval)

    def instruction(self, cid: int, busy: bool) -> pb.Instruction | None:
        """TRAIN or STOP for ``cid`` now, or None (call with the lock held)."""
        self.membership.touch(cid)
        if self.finished:
            return pb.Instruction(kind=pb.Instruction.STOP, task_id=self.task_id)
        if busy or not self.rounds.work_for(cid):
            return None
        return pb.Instruction(
            kind=pb.Instruction.TRAIN,
            round=self.publisher.current.round,
            version=self.publisher.current.version,
            config_json=self.rounds.config_json(),
            task_id=self.task_id,
            secagg=None if self.secagg is None else self.secagg.params_for(cid),
        )

    def Download(self, request: Any, context: Any) -> Iterator[bytes]:
        cid = self._member(request, context)
        try:
            with self.cv:
                published, rnd = self.publisher.lookup(request.round, request.version)
        except Refused as r:
            context.abort(r.code, r.reason)
        log.debug("client %d downloads round %d", cid, rnd)
        with self.cv:
            self.publisher.sent(published)  # counted as it starts: before the client can answer
        yield from published.chunks  # serialised once per version, sent as is to every client

    def Upload(self, request_iterator: Iterable[bytes], context: Any) -> pb.UploadReply:
        cid = self._member(None, context, stream=True)  # the gate checked the metadata
        return self.uploads.over_grpc(cid, request_iterator)

    def SecAgg(self, request: Any, context: Any) -> pb.SecAggReply:
        """One SecAgg+ stage message (or a request for the answer to it), relayed by the
        secure round service (:mod:`.secagg_round`)."""
        cid = self._member(request, context)
        if self.secagg is None:
            self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "secagg_off",
                f"client {cid}: this aggregator runs no secure aggregation",
            )
        assert self.secagg is not None
        with self.cv:  # held calls share the bound of held polls
            hold = self.long_poll if self._holding < self._max_holding else 0.0
            self._holding += 1
        try:
            return self.secagg.exchange(cid, request, hold)
        finally:
            with self.cv:
                self._holding -= 1

    def bulk_request(self, conn: socket.socket, header: dict[str, Any]) -> None:
        """One transfer on the bulk channel, checked exactly as the gRPC calls are."""
        try:
            head, op = bulk_head(header)
            cid = self.auth.check(head.task_id, head.client_id, head.token)
            with self.cv:
                if cid not in self.membership.members:
                    raise Refused(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
                if op == "download":
                    published, rnd = self.publisher.lookup(head.round, head.version)
        except Refused as r:
            if r.code != grpc.StatusCode.FAILED_PRECONDITION:
                self.tally.count(r.kind, f"bulk: {r.reason}")
            send_header(conn, {"ok": False, "code": r.code.name, "reason": r.reason})
            return
        if op == "upload":
            self.uploads.over_bulk(conn, cid, head)
            return
        log.debug("client %d downloads round %d (bulk)", cid, rnd)
        send_header(conn, {"ok": True, "total_bytes": len(published.model), "round": rnd})
        with self.cv:
            self.publisher.sent(published)
        conn.settimeout(self.transfer_timeout)  # for the whole sendall
        conn.sendall(published.model)

    # -- who is calling ---------------------------------------------------------------------
    def _abort(self, context: Any, code: grpc.StatusCode, kind: str, reason: str) -> None:
        self.tally.count(kind, reason)
        context.abort(code, reason)

    def _same_client(self, msg: Any, context: Any) -> int:
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

    def _member(self, msg: Any, context: Any, stream: bool = False) -> int:
        """The checked-in client making this call (a stream's header is checked later)."""
        cid = client_of(context) if stream else self._same_client(msg, context)
        with self.cv:
            if cid not in self.membership.members:
                context.abort(grpc.StatusCode.NOT_FOUND, f"client {cid} has not checked in")
        return cid
