"""The live state a dashboard shows: one bounded place the run writes and pages read.

The run publishes from its own threads (the round loop's callbacks, the membership's
watchers); each publish changes a few fields under a short lock and bumps a version. Nothing
is queued per reader: a page's event stream wakes on the version, takes what changed since
its own :class:`Cursor` and sends it. So a run nobody watches pays a lock and a counter per
event, a slow page gets the latest state rather than a backlog, and the round loop never waits
on a page. Round records are kept in a ring of ``history_limit``; a reader that fell behind it
gets a fresh snapshot.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .clients import ClientTable

PHASES = ("waiting", "running", "finished", "failed", "interrupted")
ENDED = ("finished", "failed", "interrupted")


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON takes it: non-finite floats become None (a browser's
    ``JSON.parse`` refuses NaN), numbers stay numbers, anything else its ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)


@dataclass
class Cursor:
    """What one reader has been sent: the state version, records, clients table version."""

    version: int = -1
    records: int = 0  # absolute index of the next record to send
    clients: int = -1
    clients_sent: float = 0.0
    report: bool = False


class LiveState:
    """The run's status, round records, clients table and final report, as pages see them.

    Args:
        run: what does not change: ``name``, ``config`` (summary pairs), ``rounds``,
            ``topology`` (nodes and edges, or None), ``relays`` (relay names by client id),
            ``mode`` (``"live"`` or ``"replay"`` of a run directory).
        clients: the clients table of a deployment (None in a simulation).
        history_limit: round records kept for the charts (the oldest are dropped).
    """

    def __init__(
        self,
        run: Mapping[str, Any],
        *,
        clients: ClientTable | None = None,
        history_limit: int = 10_000,
    ) -> None:
        self.run = jsonable(dict(run))
        self.clients = clients
        self._cv = threading.Condition(threading.Lock())
        self._version = 0
        self._records: deque[dict[str, Any]] = deque(maxlen=history_limit)
        self._total = 0  # records ever published: the absolute index of the next one
        self._report: dict[str, Any] | None = None
        self._closed = False
        self._t0: float | None = None
        self._from_round = 0
        self._status: dict[str, Any] = {
            "phase": "waiting",
            "state": None,
            "round": 0,
            "rounds": self.run.get("rounds"),
            "done": 0,
            "planned": 0,
            "eta_s": None,
            "error": None,
            "at": time.time(),
        }
        if clients is not None:
            clients.on_change = self.touch

    # -- publishing (the run's threads) -----------------------------------------------------
    def _bump(self) -> None:  # lock held
        self._version += 1
        self._status["at"] = time.time()
        self._cv.notify_all()

    def touch(self) -> None:
        """Something outside the status changed (the clients table): wake the readers."""
        with self._cv:
            self._bump()

    def started(self, round: int) -> None:
        """The run starts (or resumes) after ``round``; the ETA counts rounds from here."""
        with self._cv:
            self._t0, self._from_round = time.monotonic(), round
            self._status.update(phase="running", round=round)
            self._bump()

    def state(self, state: str, round: int) -> None:
        """The round state machine moved: ``state`` of round ``round``."""
        with self._cv:
            self._status.update(state=state, current=round)
            self._bump()

    def planned(self, n: int) -> None:
        """The round sends work to ``n`` clients."""
        with self._cv:
            self._status.update(planned=n, done=0)
            self._bump()

    def client_done(self) -> None:
        """One client of the round reported (accepted or rejected)."""
        with self._cv:
            self._status["done"] += 1
            self._bump()

    def record(self, record: Mapping[str, Any]) -> None:
        """A round closed with ``record``: keep it, move the counter and the ETA."""
        clean = jsonable(dict(record))
        with self._cv:
            self._records.append(clean)
            self._total += 1
            rnd = int(clean.get("round") or 0)
            self._status["round"] = rnd
            total = self._status.get("rounds")
            ran = rnd - self._from_round
            if self._t0 is not None and ran > 0 and isinstance(total, int):
                per_round = (time.monotonic() - self._t0) / ran
                self._status["eta_s"] = per_round * max(0, total - rnd)
            self._bump()

    def finish(
        self, report: Mapping[str, Any] | None, phase: str = "finished", error: str | None = None
    ) -> None:
        """The run ended (``phase`` finished, failed or interrupted) with ``report``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        with self._cv:
            self._report = jsonable(dict(report)) if report is not None else None
            eta = 0.0 if phase == "finished" else None
            self._status.update(phase=phase, error=error, eta_s=eta)
            self._bump()

    def close(self) -> None:
        """Wake every reader for the last time (the server is stopping)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    # -- reading (the pages' threads) ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, cursor: Cursor, timeout: float) -> bool:
        """Block until the state moved past ``cursor`` (True) or ``timeout`` passed."""
        with self._cv:
            return self._cv.wait_for(
                lambda: self._version != cursor.version or self._closed, timeout
            ) and not self._closed

    def snapshot(self, cursor: Cursor | None = None) -> dict[str, Any]:
        """Everything a page draws; moves ``cursor`` to it."""
        cursor = cursor if cursor is not None else Cursor()
        with self._cv:
            records = list(self._records)
            first = self._total - len(records)
            out: dict[str, Any] = {
                "run": self.run,
                "status": dict(self._status),
                "records": records,
                "first": first,
                "report": self._report,
            }
            cursor.version, cursor.records = self._version, self._total
            cursor.report = self._report is not None
        out["clients"] = self._clients(cursor, force=True)
        return out

    def delta(self, cursor: Cursor, clients_every: float = 1.0) -> dict[str, Any] | None:
        """What changed since ``cursor`` (None: a full snapshot is due, the reader fell
        behind the ring); moves the cursor. The clients table goes at most every
        ``clients_every`` seconds, and that often while it has rows (heartbeat ages move)."""
        with self._cv:
            first = self._total - len(self._records)
            if cursor.records < first:
                return None
            behind = self._total - cursor.records
            new = list(self._records)[-behind:] if behind else []
            out: dict[str, Any] = {"status": dict(self._status)}
            if new:
                out["records"] = new
            if self._report is not None and not cursor.report:
                out["report"] = self._report
                cursor.report = True
            cursor.version, cursor.records = self._version, self._total
            ended = self._status["phase"] in ENDED
        due = ended or time.monotonic() - cursor.clients_sent >= clients_every
        if self.clients is not None and due:
            table = self._clients(cursor, force=False)
            if table is not None:
                out["clients"] = table
        return out

    def _clients(self, cursor: Cursor, *, force: bool) -> list[dict[str, Any]] | None:
        table = self.clients
        if table is None:
            return None
        if not force and table.version == cursor.clients and not table.has_heartbeats:
            return None
        cursor.clients, cursor.clients_sent = table.version, time.monotonic()
        return table.rows()
