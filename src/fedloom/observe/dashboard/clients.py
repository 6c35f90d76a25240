"""The clients table of a deployment: who checked in, who trains, who dropped.

It is a watcher of the aggregator's membership (told of check-ins and drops with the
aggregator's lock held, so each call only notes the change under its own short lock) and is
told by the round loop which clients a round sampled and which reported. Heartbeat ages are
read from the membership when a page asks, not pushed: they change on every poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: a client's states, as the page colours them
STATES = ("joined", "training", "uploaded", "rejected", "missed", "idle", "dropped")


@dataclass
class ClientRow:
    id: int
    name: str | None  # a relay's name where the clients are a root's relays
    state: str = "joined"
    joined: float = 0.0  # wall-clock time of the (last) check-in
    rounds: int = 0  # updates accepted
    bytes: int = 0  # bytes uploaded
    rejected: int = 0  # updates refused
    checkins: int = 0


class ClientTable:
    """Rows by client id; a :class:`~fedloom.runtime.membership.MembershipWatcher`.

    Args:
        heartbeats: seconds since each member was last heard from (the membership's
            ``heartbeats``); None where nothing reports them.
        names: a name per client id (a root's relays), shown beside the id.
    """

    def __init__(
        self,
        heartbeats: Callable[[], dict[int, float]] | None = None,
        names: Sequence[str] = (),
    ) -> None:
        self.heartbeats, self.names = heartbeats, list(names)
        self.on_change: Callable[[], None] = lambda: None
        self._rows: dict[int, ClientRow] = {}
        self._lock = threading.Lock()
        self._version = 0
        self._planned: set[int] = set()

    @property
    def version(self) -> int:
        return self._version

    @property
    def has_heartbeats(self) -> bool:
        return self.heartbeats is not None and bool(self._rows)

    def _row(self, cid: int) -> ClientRow:  # lock held
        row = self._rows.get(cid)
        if row is None:
            name = self.names[cid] if 0 <= cid < len(self.names) else None
            row = self._rows[cid] = ClientRow(cid, name, joined=time.time())
        return row

    def _changed(self) -> None:  # lock released
        self._version += 1
        self.on_change()

    # -- the membership's watcher -------------------------------------------------------------
    def checked_in(self, cid: int) -> None:
        with self._lock:
            row = self._row(cid)
            row.state, row.joined = "joined", time.time()
            row.checkins += 1
        self._changed()

    def dropped(self, cid: int) -> None:
        with self._lock:
            self._row(cid).state = "dropped"
        self._changed()

    # -- the round loop -------------------------------------------------------------------------
    def planned(self, clients: Iterable[int]) -> None:
        """A round sent work to ``clients``."""
        with self._lock:
            self._planned = set(clients)
            for cid in self._planned:
                row = self._row(cid)
                if row.state != "dropped":
                    row.state = "training"
        self._changed()

    def reported(self, cid: int, nbytes: int, rejected: bool) -> None:
        """``cid``'s update of the round arrived (``rejected``: refused)."""
        with self._lock:
            row = self._row(cid)
            row.bytes += nbytes
            if rejected:
                row.rejected += 1
                row.state = "rejected"
            else:
                row.rounds += 1
                row.state = "uploaded"
        self._changed()

    def round_closed(self) -> None:
        """The round is over: its sampled clients that never reported missed it."""
        with self._lock:
            for row in self._rows.values():
                if row.state == "training":
                    row.state = "missed" if row.id in self._planned else "idle"
                elif row.state in ("uploaded", "rejected", "joined"):
                    row.state = "idle"
            self._planned = set()
        self._changed()

    # -- reading ----------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """The table sorted by id, each row with ``heartbeat_s`` (None: not a member now)."""
        ages = self.heartbeats() if self.heartbeats is not None else {}
        with self._lock:
            rows = [asdict(r) for _, r in sorted(self._rows.items())]
        for r in rows:
            age = ages.get(r["id"])
            r["heartbeat_s"] = None if age is None else round(age, 2)
        return rows
