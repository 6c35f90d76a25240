"""Receiving updates, on either channel, checked the same way before the round sees them.

An upload is admitted before its bytes are read: its header fields must be usable, its client
asked for it (by the round service), its round and version current (or kept), its sample count
within what the client declared at check-in, and no other upload of that client in flight or
filed; admission marks it in flight atomically, so a second one is refused. At most
``max_concurrent_uploads`` are received at once. The bytes are then decoded (spec, NaN/Inf,
metrics) and filed with the round service, which may still find the round closed.

A refused update whose client was asked for is filed as that client's (failed) answer, so the
round counts it and stops waiting.

With ``compression.up`` an upload's bytes are a packet of the up chain: it is decoded with the
aggregator's own chain against the global of the version it names
(:meth:`~fedloom.compression.link.Compression.unpack_update`, every field checked before use);
one that does not decode is refused, counted as ``malformed`` and filed as the client's answer.
The packets' bytes are counted as they arrive (``bytes_up``).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterable

import grpc
import torch
from google.protobuf.message import DecodeError

from ..compression.link import Compression
from ..compression.packet import MAGIC as PACKET
from ..errors import WireError
from ..params import ParamSpec
from ..update import ClientUpdate, parse_metrics
from ..wire import decode_bundle
from .bulk import recv_into, send_header
from .fields import bad_fields
from .gate import Tally
from .membership import Membership
from .proto import fedloom_pb2 as pb
from .publish import Publisher
from .rounds import RoundService
from .transport import join_chunks, split_chunk

log = logging.getLogger("fedloom.server")


class Uploads:
    """Admission, receipt and checks of updates; the refusals are kept in ``rejections``."""

    def __init__(
        self,
        cv: threading.Condition,
        spec: ParamSpec,
        task_id: str,
        membership: Membership,
        rounds: RoundService,
        tally: Tally,
        *,
        max_update_bytes: int,
        max_concurrent: int,
        transfer_timeout: float,
        publisher: Publisher | None = None,
        compression: Compression | None = None,
    ):
        self.cv, self.spec, self.task_id = cv, spec, task_id
        self.membership, self.rounds, self.tally = membership, rounds, tally
        self.max_update_bytes, self.transfer_timeout = max_update_bytes, transfer_timeout
        self.rejections: list[tuple[int, int, str]] = []
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.publisher = publisher
        self.coded = compression if compression is not None and compression.up else None
        if self.coded is not None and publisher is None:
            raise ValueError("compressed uploads decode against the publisher's versions")
        self._received = 0  # bytes of compressed uploads received since the last take

    def over_grpc(self, cid: int, stream: Iterable[bytes]) -> pb.UploadReply:
        """An ``Upload`` stream of serialised chunks from the authenticated client ``cid``."""
        chunks = iter(stream)
        try:
            first = next(chunks, None)
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
                with self._slots:
                    _, data = join_chunks(itertools.chain([first], chunks), self.max_update_bytes)
                return self._accept(cid, head, data)
            except WireError as e:
                return self._reject(cid, head.round, str(e))
            finally:
                with self.cv:
                    self.membership.receiving.discard(cid)
        except grpc.RpcError:  # the stream broke off or ran past its deadline
            return pb.UploadReply(accepted=False, reason="stream broken off")

    def over_bulk(self, conn: socket.socket, cid: int, head: pb.Chunk) -> None:
        """An upload on the bulk port, whose (authenticated) header was ``head``."""
        reply = self._admit(cid, head)
        if reply is None and not 0 <= head.total_bytes <= self.max_update_bytes:
            with self.cv:
                self.membership.receiving.discard(cid)
            reason = f"stream announces {head.total_bytes} bytes; the limit is "
            reply = self._reject(cid, head.round, reason + str(self.max_update_bytes))
        if reply is not None:
            send_header(conn, {"ok": True, "accepted": False, "reason": reply.reason})
            return
        try:
            with self._slots:
                send_header(conn, {"ok": True, "go": True})
                with self.cv:
                    data = self.rounds.receive_buffer(head.total_bytes)
                try:
                    recv_into(conn, memoryview(data), time.monotonic() + self.transfer_timeout)
                except (OSError, WireError) as e:  # the client may send it again (over gRPC)
                    log.warning(
                        "round %d: bulk upload of client %d broken off: %s", head.round, cid, e
                    )
                    with self.cv:
                        self.rounds.release(data)
                        self.rounds.broken_off(cid)
                    raise
            reply = self._accept(cid, head, data)
        finally:
            with self.cv:
                self.membership.receiving.discard(cid)
        send_header(conn, {"ok": True, "accepted": reply.accepted, "reason": reply.reason})

    def _admit(self, cid: int, head: pb.Chunk) -> pb.UploadReply | None:
        """None if ``cid``'s upload for ``head``'s round and version is wanted: it is then
        marked in flight (the caller unmarks it), so a second one is refused. Else the reply."""
        why = bad_fields(head)
        if why is not None:
            return self._reject(cid, head.round, why, record=False)
        with self.cv:
            member = self.membership.members.get(cid)
            if member is None:  # dropped as silent since the caller's check
                return self._reject(cid, head.round, "no longer a member", record=False)
            member.last_seen = time.monotonic()
            duplicate = cid in self.membership.receiving or self.rounds.answered(cid)
            if not duplicate:
                expected, stale = self.rounds.claim(cid, head.round, head.version)
                over = head.num_samples > member.num_samples
                if expected and not stale and not over:
                    self.membership.receiving.add(cid)
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

    def _accept(self, cid: int, head: pb.Chunk, data: bytearray) -> pb.UploadReply:
        """Check an upload's bytes and metrics, then file it under its round, if still open."""
        try:
            if self.coded is not None:
                decoded = self._unpack(cid, head, data)
                if decoded is None:
                    with self.cv:
                        self.rounds.release(data)
                    why = "update refused: its round closed"
                    return self._reject(cid, head.round, why, record=False)
                params, tensors = decoded
            else:
                params, tensors, _ = decode_bundle(data, self.spec, copy=False)  # no second copy
            metrics = parse_metrics(head.metrics_json)
        except (WireError, ValueError) as e:
            with self.cv:
                self.rounds.release(data)
            why = str(e)
            if self.coded is None and data[: len(PACKET)] == PACKET:
                why = "a compressed packet; this aggregator's config has no compression.up"
            return self._reject(cid, head.round, why)
        update = ClientUpdate(cid, params, int(head.num_samples), metrics, head.round, head.version)
        if tensors:
            update.extras["tensors"] = tensors
        with self.cv:
            filed = self.rounds.file(update, data)
            if not filed:
                self.rounds.release(data)
        if not filed:  # the round closed while the bytes came in
            return self._reject(cid, head.round, "update refused: its round closed", record=False)
        return pb.UploadReply(accepted=True)

    def _unpack(
        self, cid: int, head: pb.Chunk, data: bytearray
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """(model, extras) of a compressed upload, or None when the version it names is no
        longer kept; a packet that does not decode is counted ``malformed`` (WireError)."""
        assert self.coded is not None and self.publisher is not None
        with self.cv:
            self._received += len(data)
            base = self.publisher.base(head.version)
        if base is None:
            return None
        try:
            params, tensors = self.coded.unpack_update(data, base)
        except WireError as e:
            self.tally.count("malformed", f"client {cid}: compressed upload: {e}")
            raise
        return params.to(self.spec.dtype), {n: t.to(self.spec.dtype) for n, t in tensors.items()}

    def take_received(self) -> dict[str, int]:
        """``{"bytes_up": ...}`` received since the last call (nothing without an up chain)."""
        if self.coded is None:
            return {}
        with self.cv:
            received, self._received = self._received, 0
        return {"bytes_up": received}

    def _reject(self, cid: int, rnd: int, reason: str, record: bool = True) -> pb.UploadReply:
        """Refuse an upload; ``record`` files it as the client's (rejected) update of the
        round, so the round counts it and stops waiting for the client."""
        log.warning("round %d: rejected update of client %d: %s", rnd, cid, reason)
        self.rejections.append((rnd, cid, reason))
        if record:
            error = ClientUpdate(cid, torch.empty(0), 0, {}, rnd, extras={"error": reason})
            with self.cv:
                self.rounds.record_refusal(error)
        return pb.UploadReply(accepted=False, reason=reason)

    def _malformed(self, cid: int, reason: str) -> pb.UploadReply:
        self.tally.count("malformed", f"client {cid}: {reason}")
        return pb.UploadReply(accepted=False, reason=reason)
