"""The dashboard's HTTP server: the page, a JSON snapshot and a server-sent event stream.

The standard library's threading server, read-only (GET only), one thread per page. Each
stream sends a snapshot, then what changed, at most ``1 / min_interval`` times a second
(bursts of events coalesce into one message), a keep-alive comment when idle, and a last
``end`` event once the run is over, so the page stops listening instead of reconnecting.
At most ``max_streams`` pages listen at once; the next is told 503, and a page that stops
reading for 30 s is let go, so a stalled browser holds one thread and no memory that grows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from .access import Access
from .state import ENDED, Cursor, LiveState

log = logging.getLogger("fedloom.dashboard")

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A page that left or spoke plain HTTP to HTTPS: a debug line, not a traceback."""
        log.debug("dashboard request from %s failed", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class DashboardServer:
    """Serves ``state`` at ``host:port`` under ``access``'s rules (port 0 takes a free one).

    Args:
        state: what the pages show.
        access: token, TLS and host checks (:class:`Access`).
        max_streams: pages listening at once.
        min_interval: seconds between two messages of one stream.
        keepalive: seconds of silence before a keep-alive comment.
    """

    def __init__(
        self,
        state: LiveState,
        port: int = 0,
        *,
        access: Access | None = None,
        max_streams: int = 64,
        min_interval: float = 0.1,
        keepalive: float = 15.0,
    ) -> None:
        self.state, self.access = state, access or Access("127.0.0.1")
        self.max_streams, self.min_interval, self.keepalive = max_streams, min_interval, keepalive
        self._streams = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = _HTTPServer6 if ":" in self.access.host else _HTTPServer
        self.httpd: _HTTPServer = server((self.access.host, port), self._handler())
        if self.access.ssl_context is not None:  # the handshake runs in the page's thread
            self.httpd.socket = self.access.ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.2,), name="fedloom-dashboard", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The page's address, with its token where one is required."""
        host = self.access.host
        host = f"[{host}]" if ":" in host else host
        query = f"?token={self.access.token}" if self.access.token else ""
        return f"{self.access.scheme}://{host}:{self.port}/{query}"

    def start(self) -> DashboardServer:
        self._thread.start()
        return self

    def stop(self, linger: float = 0.0) -> None:
        """Close every stream and the port; ``linger`` seconds first let the pages read a
        finished run's last messages (their streams end by themselves)."""
        deadline = time.monotonic() + linger
        while self._streams and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stopping.set()
        self.state.close()
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never began
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the streams ----------------------------------------------------------------------------
    def _claim(self) -> bool:
        with self._lock:
            if self._streams >= self.max_streams:
                return False
            self._streams += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._streams -= 1

    def stream(self, write: Callable[[bytes], Any]) -> None:
        """Write the event stream with ``write`` until the run ends, the page leaves (an
        OSError from ``write``) or the server stops."""
        state, cursor = self.state, Cursor()
        message = state.snapshot(cursor)
        write(b"retry: 2000\n\n" + _event("snapshot", message))
        last = time.monotonic()
        beats = state.clients is not None  # heartbeat ages move: resend the table each second
        while message["status"]["phase"] not in ENDED:
            moved = state.wait(cursor, timeout=1.0 if beats else self.keepalive)
            if state.closed or self._stopping.is_set():
                return
            delta = state.delta(cursor)
            if delta is not None and not moved and "clients" not in delta:
                if time.monotonic() - last >= self.keepalive:
                    write(b": keep-alive\n\n")
                    last = time.monotonic()
                continue
            message = state.snapshot(cursor) if delta is None else delta
            write(_event("snapshot" if delta is None else "update", message))
            last = time.monotonic()
            time.sleep(self.min_interval)  # what happens meanwhile goes in the next message
        write(_event("end", {}))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fedloom-dashboard"
            protocol_version = "HTTP/1.1"
            timeout = 30  # a page that stops reading (or an idle connection) is let go

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
                    self._get()  # the page may go away at any time

            def do_HEAD(self) -> None:
                self.send_error(405)

            def _get(self) -> None:
                access = outer.access
                if outer._stopping.is_set():  # a connection the browser opened before the stop
                    self.send_error(503, "the dashboard has stopped")
                    return
                if not access.host_allowed(self.headers.get("Host")):
                    self.send_error(403, "host not allowed")
                    return
                path = urlsplit(self.path).path
                if path in STATIC:
                    name, kind = STATIC[path]
                    self._send(200, kind, _static(name))
                    return
                if path == "/favicon.ico":
                    self._send(204, "image/x-icon", b"")
                    return
                if path not in ("/api/state", "/events"):
                    self.send_error(404)
                    return
                if not access.token_ok(self.path, self.headers.get("Authorization")):
                    self.send_error(401, "a token is required (?token=...)")
                    return
                if path == "/api/state":
                    body = json.dumps(outer.state.snapshot(), separators=(",", ":")).encode()
                    self._send(200, "application/json", body)
                    return
                self._events()

            def _events(self) -> None:
                if not outer._claim():
                    self.send_error(503, "too many dashboard pages are open")
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    for k, v in SECURITY_HEADERS.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.close_connection = True

                    def write(data: bytes) -> None:
                        self.wfile.write(data)
                        self.wfile.flush()

                    outer.stream(write)
                finally:
                    outer._release()

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in SECURITY_HEADERS.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
