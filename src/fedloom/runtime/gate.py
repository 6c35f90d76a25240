"""Who may call the aggregator, and how much at once, decided before a worker thread is spent.

Every call carries its identity in gRPC metadata (``fedloom-task``, ``fedloom-client``,
``fedloom-token``). :class:`Gate` is a server interceptor, and gRPC runs interceptors on its
polling thread before it schedules a handler: an outsider's call is refused there, so it never
holds a worker nor has a byte of its stream read. An authenticated client gets a bounded
number of calls of each kind at once, and every call a deadline (:class:`Watchdog`), so a
stream that stalls is cancelled instead of holding its thread for ever.

Refusals are counted by kind in a :class:`Tally`, which logs the first of each kind at once and
then one summary line per period: a flood costs a few log lines, not a traceback per call.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from ..errors import FedloomError

log = logging.getLogger("fedloom.server")

TASK_KEY, CLIENT_KEY, TOKEN_KEY = "fedloom-task", "fedloom-client", "fedloom-token"
_CANONICAL = re.compile(r"(0|[1-9][0-9]{0,17})")  # ASCII digits only: no " 3 ", no "٣"


class Refused(FedloomError):
    """A request the aggregator turns down; gRPC calls abort with ``code``."""

    def __init__(self, code: grpc.StatusCode, reason: str, kind: str = "refused"):
        super().__init__(reason)
        self.code, self.reason, self.kind = code, reason, kind


def identity_metadata(task_id: str, client_id: int, token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with every call."""
    return ((TASK_KEY, task_id), (CLIENT_KEY, str(client_id)), (TOKEN_KEY, token))


class Authenticator:
    """Checks task, client id and token. Ids are canonical decimal integers from ``ids``;
    with ``tokens``, every id needs its own token (compared in constant time)."""

    def __init__(self, task_id: str, ids: Collection[int], tokens: dict[int, str] | None):
        self.task_id, self.tokens = task_id, tokens
        self.ids = ids if isinstance(ids, range) else frozenset(ids)
        if tokens is not None and (missing := sorted(set(self.ids) - set(tokens))):
            raise ValueError(f"the token table has no token for clients {missing[:10]}")

    def check(self, task: object, client: object, token: object) -> int:
        if task != self.task_id:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {str(task)[:64]!r} is not served here",
                "wrong_task",
            )
        if not isinstance(client, str) or not _CANONICAL.fullmatch(client):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"client id must be a decimal integer, got {str(client)[:32]!r}",
                "bad_id",
            )
        cid = int(client)
        if cid not in self.ids:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"unknown client {cid}", "unknown")
        if self.tokens is not None and not (
            isinstance(token, str)
            and hmac.compare_digest(token.encode(), self.tokens[cid].encode())
        ):
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED, f"bad token for client {cid}", "bad_token"
            )
        return cid


class Tally:
    """Counts refusals by kind; logs the first of each kind, then one summary per ``period``."""

    def __init__(self, period: float = 10.0):
        self.period = period
        self.total: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._since_round: Counter[str] = Counter()
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def count(self, kind: str, message: str) -> None:
        with self._lock:
            first = kind not in self.total
            self.total[kind] += 1
            self._since_round[kind] += 1
            self._unreported[kind] += 0 if first else 1
            now = time.monotonic()
            summary = None
            if now - self._last >= self.period and self._unreported:
                summary = ", ".join(f"{k}: {n}" for k, n in sorted(self._unreported.items()))
                self._unreported.clear()
                self._last = now
        if first:
            log.warning("refused (%s): %s (further ones are summarised)", kind, message)
        if summary:
            log.warning("refused in the last %.0f s: %s", self.period, summary)

    def take_round(self) -> dict[str, int]:
        """Refusals since the last call (one round's worth)."""
        with self._lock:
            out = dict(self._since_round)
            self._since_round.clear()
        return out


class Watchdog:
    """Cancels calls that outlive their deadline (gRPC enforces only deadlines the client
    sets), and runs ``on_expire`` callbacks for other resources such as sockets."""

    def __init__(self, tally: Tally, tick: float = 0.25):
        self.tally, self.tick = tally, tick
        self._due: dict[int, tuple[float, Callable[[], Any], str]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedloom-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def deadline(self, seconds: float, cancel: Callable[[], Any], what: str) -> Iterator[None]:
        key = next(self._ids)
        with self._lock:
            self._due[key] = (time.monotonic() + seconds, cancel, what)
        try:
            yield
        finally:
            with self._lock:
                self._due.pop(key, None)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                late = [k for k, (t, _, _) in self._due.items() if t < now]
                expired = [self._due.pop(k) for k in late]
            for _, cancel, what in expired:
                self.tally.count("deadline", f"{what} ran past its deadline; cancelled")
                try:
                    cancel()
                except Exception as e:  # noqa: BLE001 - a socket already closed, a call over
                    log.debug("cancelling %s: %s", what, e)

    def close(self) -> None:
        self._stop.set()


class Gate(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Authenticates every call from its metadata and bounds calls per client and kind.

    Args:
        auth: the identity check.
        tally: where refusals are counted.
        watchdog: gives each call ``deadlines[method]`` seconds.
        limits: calls of each method one client may have open at once.
    """

    def __init__(
        self,
        auth: Authenticator,
        tally: Tally,
        watchdog: Watchdog,
        deadlines: dict[str, float],
        limits: dict[str, int],
    ):
        self.auth, self.tally, self.watchdog = auth, tally, watchdog
        self.deadlines, self.limits = deadlines, limits
        self._open: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler is None or method not in self.limits:
            return handler
        md = dict(handler_call_details.invocation_metadata or ())
        try:
            cid = self.auth.check(md.get(TASK_KEY), md.get(CLIENT_KEY), md.get(TOKEN_KEY))
            self._enter(cid, method)
        except Refused as r:
            self.tally.count(r.kind, f"{method}: {r.reason}")
            return _refusal(handler, r)
        return _wrapped(handler, lambda: self._leave(cid, method), self._guard(method))

    def _enter(self, cid: int, method: str) -> None:
        with self._lock:
            if self._open[cid, method] >= self.limits[method]:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"client {cid} has {self.limits[method]} {method} calls open already",
                    "too_many_calls",
                )
            self._open[cid, method] += 1

    def _leave(self, cid: int, method: str) -> None:
        with self._lock:
            self._open[cid, method] -= 1
            if not self._open[cid, method]:
                del self._open[cid, method]

    def _guard(self, method: str) -> Callable[[Any], Any]:
        seconds = self.deadlines[method]
        return lambda context: self.watchdog.deadline(seconds, context.cancel, f"a {method} call")


def client_of(context: grpc.ServicerContext) -> int:
    """The client id :class:`Gate` already authenticated for this call."""
    return int(dict(context.invocation_metadata())[CLIENT_KEY])


def _refusal(handler: grpc.RpcMethodHandler, r: Refused) -> grpc.RpcMethodHandler:
    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(r.code, r.reason)

    # no request_deserializer: a refused call's body is never parsed (an outsider's garbage
    # body would otherwise make gRPC log a traceback per call before the abort)
    kind = _kind(handler)
    return handler._replace(**{kind: abort, "request_deserializer": None})


def _wrapped(
    handler: Any, leave: Callable[[], None], guard: Callable[[Any], Any]
) -> grpc.RpcMethodHandler:
    kind = _kind(handler)
    behaviour = getattr(handler, kind)
    if handler.response_streaming:

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            try:
                with guard(context):
                    yield from behaviour(request, context)
            finally:
                leave()

        return handler._replace(**{kind: streaming})

    def unary(request: Any, context: Any) -> Any:
        try:
            with guard(context):
                return behaviour(request, context)
        finally:
            leave()

    return handler._replace(**{kind: unary})


def _kind(handler: grpc.RpcMethodHandler) -> str:
    return {
        (False, False): "unary_unary",
        (False, True): "unary_stream",
        (True, False): "stream_unary",
        (True, True): "stream_stream",
    }[handler.request_streaming, handler.response_streaming]
