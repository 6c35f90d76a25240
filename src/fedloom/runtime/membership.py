"""Who is in the run: check-ins, liveness, and waiting for enough clients.

Membership follows AlphaMed's check-in: the run starts once ``min_clients`` have checked in (or
``start_timeout`` passed with at least one); a client that joins later is sampled from the next
round; a client silent for ``heartbeat_timeout`` is dropped, unless the aggregator is holding
one of its polls or receiving one of its uploads (both prove it alive). A client that checks in
while a member restarted: the caller hands its round's work out again.

The aggregator's one lock (``cv``) guards the members; methods named so expect it held.
Watchers (:class:`MembershipWatcher`, e.g. the live dashboard's clients table) hear of every
check-in and drop; they are told with the lock held, so they only note it and return.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import QuorumError

log = logging.getLogger("fedloom.server")


@dataclass
class Member:
    client_id: int
    num_samples: int  # declared at check-in: it bounds the weight of each of its updates
    last_seen: float
    joined_round: int


class MembershipWatcher(Protocol):
    """Told of each check-in and drop (lock held): note it and return, never block."""

    def checked_in(self, cid: int) -> None: ...
    def dropped(self, cid: int) -> None: ...


class Membership:
    """The members, their heartbeats, and the wait for the first (and every later) round.

    Args:
        cv: the aggregator's lock and condition.
        on_drop: called (lock held) with each client dropped for silence.
    """

    def __init__(
        self,
        cv: threading.Condition,
        *,
        min_clients: int,
        start_timeout: float | None,
        quorum: int,
        heartbeat_timeout: float,
        round_timeout: float | None,
        poll_interval: float,
        on_drop: Callable[[int], None],
    ):
        self.cv, self.on_drop = cv, on_drop
        self.min_clients, self.start_timeout, self.quorum = min_clients, start_timeout, quorum
        self.heartbeat_timeout, self.round_timeout = heartbeat_timeout, round_timeout
        self.poll_interval = poll_interval
        self.members: dict[int, Member] = {}
        self.receiving: set[int] = set()  # an upload admitted and in flight: alive, and one only
        self._polling: dict[int, int] = {}  # clients whose poll is being held: alive
        self._started = False
        self._created = time.monotonic()
        self.watchers: list[MembershipWatcher] = []  # read-only observers (the dashboard)

    def heartbeats(self) -> dict[int, float]:
        """Seconds since each member was last heard from (takes the lock, briefly)."""
        with self.cv:
            now = time.monotonic()
            return {cid: now - m.last_seen for cid, m in self.members.items()}

    def check_in(self, cid: int, num_samples: int, round: int) -> bool:
        """Record a check-in (lock held); True when ``cid`` was a member already (restarted)."""
        member = self.members.get(cid)
        if member is None:
            self.members[cid] = Member(cid, num_samples, time.monotonic(), round + 1)
            log.info("client %d checked in (%d members)", cid, len(self.members))
        else:  # a client checks in once per process: it restarted, so its work is lost
            member.last_seen, member.num_samples = time.monotonic(), num_samples
            log.info("client %d checked in again (restarted?): its round's work is re-sent", cid)
        for w in self.watchers:
            w.checked_in(cid)
        self.cv.notify_all()
        return member is not None

    def touch(self, cid: int) -> None:
        """A call from ``cid`` arrived: it is alive (lock held)."""
        if cid in self.members:
            self.members[cid].last_seen = time.monotonic()

    @contextlib.contextmanager
    def holding_poll(self, cid: int) -> Iterator[None]:
        """While the aggregator holds a poll of ``cid`` (lock held around it), ``cid`` is alive."""
        self._polling[cid] = self._polling.get(cid, 0) + 1
        try:
            yield
        finally:
            self._polling[cid] -= 1
            self.touch(cid)

    def drop_silent(self) -> None:
        """Drop the members silent for ``heartbeat_timeout`` (lock held)."""
        now = time.monotonic()
        for cid, m in list(self.members.items()):
            if now - m.last_seen > self.heartbeat_timeout and not self._polling.get(cid):
                if cid in self.receiving:
                    continue  # an upload under way is alive (its deadline bounds it)
                del self.members[cid]
                self.on_drop(cid)
                for w in self.watchers:
                    w.dropped(cid)
                log.warning("client %d silent for %.0f s: dropped", cid, now - m.last_seen)

    def wait_for_clients(self, round: int) -> list[int]:
        """The live members. Before the first round, block until ``min_clients`` checked in
        (or ``start_timeout`` passed with at least one); later, until ``quorum`` are live,
        at most ``round_timeout`` (then :class:`QuorumError`)."""
        t0 = time.monotonic()
        deadline = None if self.start_timeout is None else self._created + self.start_timeout
        logged = t0
        with self.cv:
            while True:
                self.drop_silent()
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
                self.cv.wait(timeout=self.poll_interval * 4)


def format_ids(ids: Collection[int]) -> str:
    """A short text of client ids for log lines."""
    if isinstance(ids, range):
        return f"[{ids.start}, {ids.stop})"
    shown = sorted(ids)
    return f"{shown[:12]}{' ...' if len(shown) > 12 else ''}"
