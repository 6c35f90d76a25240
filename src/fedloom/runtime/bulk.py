"""A bulk data channel beside gRPC: models move over a plain (or TLS) socket at near raw speed.

gRPC stays the control channel (check-in, polls, heartbeats, tokens, and the fallback for
models). Its HTTP/2 framing caps a Python stream at about half of what a raw socket moves
on the same machine, so models, the only large messages, take a second port when the
client can reach it. Every transfer is authorised as the gRPC calls are: the header names
task, client and token, the aggregator checks membership, round and version, and sizes are
announced and limited before any buffer is allocated. A client that cannot reach the bulk
port (a firewall, a proxy) falls back to the gRPC stream, which carries the same bytes.

A message is a 4-byte big-endian length, a JSON header of at most 64 KiB, then the raw
bytes the header announces (``total_bytes``): the wire format of :mod:`fedloom.wire`, so
nothing is ever unpickled and the receiver checks the model against its spec as usual.

    download: client -> {op: download, ...}     server -> {ok, total_bytes, ...} + bytes
    upload:   client -> {op: upload, ..., total_bytes}   server -> {ok} (go ahead)
              client -> bytes                             server -> {ok, accepted, reason}
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import BulkRefused, WireError

log = logging.getLogger("fedloom.bulk")

HEADER_MAX = 64 << 10
_LEN = struct.Struct(">I")


def send_header(sock: socket.socket, header: dict[str, Any]) -> None:
    body = json.dumps(header).encode()
    if len(body) > HEADER_MAX:
        raise WireError(f"bulk header of {len(body)} bytes exceeds {HEADER_MAX}")
    sock.sendall(_LEN.pack(len(body)) + body)


def recv_header(sock: socket.socket, deadline: float | None = None) -> dict[str, Any]:
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size, deadline))
    if n > HEADER_MAX:
        raise WireError(f"bulk header announces {n} bytes; the limit is {HEADER_MAX}")
    try:
        header = json.loads(recv_exact(sock, n, deadline))
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise WireError(f"malformed bulk header: {e}") from None
    if not isinstance(header, dict):
        raise WireError("malformed bulk header: not a JSON object")
    return header


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytearray:
    buf = bytearray(n)
    recv_into(sock, memoryview(buf), deadline)
    return buf


def recv_into(sock: socket.socket, view: memoryview, deadline: float | None = None) -> None:
    """Fill ``view`` from ``sock`` (straight into the final buffer: no intermediate copy).

    ``deadline`` (``time.monotonic()`` seconds) bounds the whole transfer, not each read, so
    a peer trickling a byte at a time cannot hold the connection for ever."""
    pos, n = 0, len(view)
    timeout = sock.gettimeout()
    while pos < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireError(f"bulk transfer ran past its deadline after {pos} of {n} bytes")
            sock.settimeout(left if timeout is None else min(left, timeout))
        got = sock.recv_into(view[pos:], min(n - pos, 1 << 24))
        if got == 0:
            raise WireError(f"bulk stream ended after {pos} of {n} bytes")
        pos += got
    if deadline is not None:
        sock.settimeout(timeout)


class BulkServer:
    """Accepts bulk connections and runs ``handler(conn, header)`` for each, in its own thread.

    A connection has ``header_timeout`` seconds for its TLS handshake and header, and
    ``timeout`` for each later socket operation (the handler bounds whole transfers). At most
    ``max_connections`` are open at once; when all are taken, the oldest one still waiting
    for its header is closed to make room (a slowloris cannot fill the slots), and if none
    is, the new connection is closed (its client falls back to gRPC).
    """

    def __init__(
        self,
        host: str,
        handler: Callable[[socket.socket, dict[str, Any]], None],
        *,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        timeout: float = 60.0,
        header_timeout: float = 5.0,
        on_drop: Callable[[Exception], None] | None = None,
    ):
        self.handler, self.ssl_context, self.timeout = handler, ssl_context, timeout
        self.header_timeout, self.max_connections = header_timeout, max_connections
        self.on_drop = on_drop or (lambda e: log.info("bulk connection dropped: %s", e))
        self._open = 0
        self._waiting: dict[socket.socket, float] = {}  # connections yet to send a header
        self._lock = threading.Lock()
        self._listener = socket.create_server((host.strip("[]") or "0.0.0.0", port))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self.evicted = 0
        self._thread = threading.Thread(target=self._accept, name="fedloom-bulk", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._open >= self.max_connections and self._waiting:
                    oldest = min(self._waiting, key=self._waiting.__getitem__)
                    del self._waiting[oldest]
                    self.evicted += 1
                    with contextlib.suppress(OSError):
                        oldest.shutdown(socket.SHUT_RDWR)  # its thread sees EOF and closes it
                elif self._open >= self.max_connections:
                    conn.close()
                    continue
                self._open += 1
                self._waiting[conn] = time.monotonic()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            raw.settimeout(self.header_timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.header_timeout
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(raw, server_side=True)
            header = recv_header(conn, deadline)
            with self._lock:
                self._waiting.pop(raw, None)
            conn.settimeout(self.timeout)
            self.handler(conn, header)
        except (OSError, WireError, ssl.SSLError) as e:
            self.on_drop(e)
        finally:
            conn.close()
            with self._lock:
                self._waiting.pop(raw, None)
                self._open -= 1

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None,
    timeout: float,
) -> socket.socket:
    sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ssl_context is not None:
        sock = ssl_context.wrap_socket(sock, server_hostname=server_name or host.strip("[]"))
    return sock


def answer(header: dict[str, Any]) -> dict[str, Any]:
    """``header`` if it is not a refusal, else raise :class:`BulkRefused`."""
    if not header.get("ok"):
        raise BulkRefused(str(header.get("code", "UNKNOWN")), str(header.get("reason", "")))
    return header
