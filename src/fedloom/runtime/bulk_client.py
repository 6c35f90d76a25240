"""The client's side of the bulk port (:mod:`.bulk`): a :class:`~.transport.ModelTransport`.

It moves a model only while the aggregator offers the port (``port`` set from the check-in).
A transfer that fails for a reason gRPC may not share (a firewall, a broken connection, "not
checked in") turns the port off until the next check-in and answers None, so the client falls
back to the gRPC stream; refusals of who the client is are final (:class:`RefusedError`), and
"not the current model" (``FAILED_PRECONDITION``) is raised for the caller to poll again.
"""

from __future__ import annotations

import logging
import socket
import ssl

from ..errors import BulkRefused, RefusedError, WireError
from . import bulk
from .proto import fedloom_pb2 as pb
from .transport import ModelHeader

log = logging.getLogger("fedloom.client")

_FINAL = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT")


class BulkTransport:
    """Downloads into one reused buffer (no page faults per round); uploads from the
    tensor's own memory."""

    name = "bulk"

    def __init__(
        self,
        host: str,
        client_id: int,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
    ):
        self.host, self.client_id = host, client_id
        self.ssl_context, self.server_name = ssl_context, server_name or None
        self.port = 0  # offered by the aggregator at check-in; 0: not used
        self._recv = bytearray()

    def download(self, header: ModelHeader, limit: int) -> memoryview | None:
        if not self.port:
            return None
        try:
            with self._connect() as sock:
                bulk.send_header(sock, header.bulk("download"))
                head = bulk.answer(bulk.recv_header(sock))
                total = int(head["total_bytes"])
                if not 0 <= total <= limit:
                    raise WireError(f"bulk download announces {total} bytes; limit {limit}")
                if len(self._recv) != total:
                    self._recv = bytearray(total)
                view = memoryview(self._recv)
                bulk.recv_into(sock, view)
        except BulkRefused as e:
            if e.code in _FINAL:
                raise RefusedError(f"client {self.client_id}: {e.reason}") from None
            if e.code == "FAILED_PRECONDITION":
                raise
            self._fail("download", e)
            return None  # NOT_FOUND: gRPC checks in again
        except (OSError, WireError, KeyError, ValueError) as e:
            self._fail("download", e)
            return None
        return view

    def upload(self, header: ModelHeader, parts: tuple[bytes, memoryview]) -> pb.UploadReply | None:
        if not self.port:
            return None
        total = len(parts[0]) + len(parts[1])
        try:
            with self._connect() as sock:
                bulk.send_header(sock, header.bulk("upload", total_bytes=total))
                head = bulk.answer(bulk.recv_header(sock))
                if head.get("go"):
                    for part in parts:  # header, then values from the tensor's own memory
                        sock.sendall(part)
                    head = bulk.answer(bulk.recv_header(sock))
        except BulkRefused as e:
            if e.code in _FINAL:
                raise RefusedError(f"client {self.client_id}: {e.reason}") from None
            self._fail("upload", e)
            return None
        except (OSError, WireError) as e:
            self._fail("upload", e)
            return None
        return pb.UploadReply(
            accepted=bool(head.get("accepted")), reason=str(head.get("reason", ""))
        )

    def _connect(self) -> socket.socket:
        return bulk.connect(self.host, self.port, self.ssl_context, self.server_name, timeout=60)

    def _fail(self, what: str, e: Exception) -> None:
        """Fall back to gRPC until the next check-in offers the bulk port again."""
        log.info("client %d: bulk %s failed (%s); using gRPC", self.client_id, what, e)
        self.port = 0
