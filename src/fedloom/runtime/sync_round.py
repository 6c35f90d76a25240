"""Synchronous rounds: each sampled client trains the round's model once, then the round closes.

``distribute`` publishes the round's model and plan; each sampled client is handed the work
once (again only if it restarts), and one update per client and round is filed. ``collect``
yields them in client-id order, so the strategy aggregates exactly as the simulation does:
same seed, bit-identical parameters. A round closes when every sampled client has answered,
gone silent, or ``round_timeout`` passed; with fewer than ``quorum`` valid updates ``collect``
raises :class:`QuorumError` before anything is aggregated, and the loop retries or skips it.

Receive buffers are reused: each belongs to one upload while it is received, then to its
round's results until the round is over (the strategy reads the update in place), then to the
pool for the next round.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import torch

from ..algorithms.base import RoundPlan
from ..errors import FedloomError, QuorumError
from ..update import ClientUpdate
from .membership import Membership, format_ids
from .publish import Published, Publisher

log = logging.getLogger("fedloom.server")


def plan_config_json(plan: RoundPlan) -> str:
    """The plan's config as clients receive it (the one place it is serialised)."""
    return json.dumps(plan.to_wire())


class SyncRounds:
    """The :class:`~fedloom.runtime.rounds.RoundService` of synchronous strategies."""

    def __init__(
        self,
        cv: threading.Condition,
        publisher: Publisher,
        membership: Membership,
        *,
        quorum: int,
        round_timeout: float | None,
        poll_interval: float,
    ):
        self.cv, self.publisher, self.membership = cv, publisher, membership
        self.quorum, self.round_timeout, self.poll_interval = quorum, round_timeout, poll_interval
        self._plan = RoundPlan([])
        self._config_json = "{}"
        self._round_started = time.monotonic()
        self._handed: set[int] = set()  # clients given this round's work
        self._results: dict[int, ClientUpdate] = {}
        self._held: list[bytearray] = []  # the receive buffers this round's results live in
        self._free: list[bytearray] = []

    # -- the round loop's side ------------------------------------------------------------
    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        published = self.publisher.serialize(global_params, round, round - 1, plan.tensors)
        with self.cv:
            self._start(plan, published, global_params)

    def _start(self, plan: RoundPlan, published: Published, global_params: torch.Tensor) -> None:
        """Open the round (lock held): its model is served and its clients get work."""
        self.publisher.current = published
        self._plan, self._config_json = plan, plan_config_json(plan)
        self._handed, self._results = set(), {}
        # the last round's updates are aggregated: their buffers are free (one per client)
        self._free = [*self._held, *self._free][: len(plan.clients)]
        self._held = []
        self._round_started = time.monotonic()
        self.cv.notify_all()

    def collect(self) -> Iterator[ClientUpdate]:
        """Yield updates in client-id order. Nothing is yielded until ``quorum`` valid ones
        arrived, so a short round raises :class:`QuorumError` before aggregation starts."""
        planned = sorted(self._plan.clients)
        rnd = self.publisher.current.round
        with self.cv:
            while (
                self._valid() < self.quorum
                and any(self._pending(c) for c in planned)
                and not self._timed_out()
            ):
                self._wait_logged(planned)
            if self._valid() < self.quorum:
                raise QuorumError(
                    f"round {rnd}: {self._valid()} of {len(planned)} clients returned "
                    f"a valid update; the quorum is {self.quorum}"
                )
        for cid in planned:
            with self.cv:
                while self._pending(cid) and not self._timed_out():
                    self._wait_logged(planned)
                update = self._results.get(cid)
            if update is None:
                why = "timed out" if cid in self.membership.members else "is gone"
                log.warning("round %d: client %d %s; going on without it", rnd, cid, why)
                continue
            yield update

    def publish(self, params: torch.Tensor, version: int) -> None:
        raise FedloomError("this aggregator runs synchronous rounds; publish is for async ones")

    def next_update(self, timeout: float) -> ClientUpdate | None:
        raise FedloomError("this aggregator runs synchronous rounds; use collect")

    def base(self, version: int) -> torch.Tensor | None:
        raise FedloomError("this aggregator runs synchronous rounds; it keeps no versions")

    # -- the handlers' side (lock held) -------------------------------------------------------
    def config_json(self) -> str:
        return self._config_json

    def work_for(self, cid: int) -> bool:
        todo = cid in self._plan.clients and cid not in self._handed and cid not in self._results
        if todo:
            self._handed.add(cid)
        return todo

    def answered(self, cid: int) -> bool:
        return cid in self._results

    def claim(self, cid: int, round: int, version: int) -> tuple[bool, bool]:
        current = self.publisher.current
        return cid in self._plan.clients, (round, version) != (current.round, current.version)

    def file(self, update: ClientUpdate, data: bytearray) -> bool:
        current = self.publisher.current
        if (update.round, update.version) != (current.round, current.version):
            return False  # the round closed while the bytes came in
        self._results[update.client_id] = update
        self._held.append(data)
        self.cv.notify_all()
        return True

    def record_refusal(self, error: ClientUpdate) -> None:
        if error.round == self.publisher.current.round and error.client_id in self._plan.clients:
            self._results.setdefault(error.client_id, error)
            self.cv.notify_all()

    def receive_buffer(self, n: int) -> bytearray:
        for i, buf in enumerate(self._free):
            if len(buf) == n:
                return self._free.pop(i)
        return bytearray(n)

    def release(self, data: bytearray) -> None:
        self._free.append(data)

    def restarted(self, cid: int) -> None:
        if cid not in self._results:
            self._handed.discard(cid)

    def dropped(self, cid: int) -> None:
        """Nothing to undo: the round stops waiting for a client that is not a member."""

    def broken_off(self, cid: int) -> None:
        """Nothing to undo: a sampled client's upload stays expected until the round closes."""

    # -- waiting ------------------------------------------------------------------------------
    def _valid(self) -> int:
        return sum(1 for u in self._results.values() if "error" not in u.extras)

    def _pending(self, cid: int) -> bool:
        """Whether ``cid``'s answer for the round may still come."""
        return cid not in self._results and cid in self.membership.members

    def _timed_out(self) -> bool:
        return self.round_timeout is not None and (
            time.monotonic() - self._round_started > self.round_timeout
        )

    def _wait_logged(self, planned: list[int]) -> None:
        """Wait a little; every 10 s say which clients the round waits for."""
        elapsed = time.monotonic() - self._round_started
        self.cv.wait(timeout=self.poll_interval * 4)
        self.membership.drop_silent()
        now = time.monotonic() - self._round_started
        if int(now / 10) > int(elapsed / 10):
            waiting = [c for c in planned if self._pending(c)]
            closes = (
                ""
                if self.round_timeout is None
                else f"; closes in {self.round_timeout - now:.0f} s"
            )
            log.info(
                "round %d waits for clients %s (%d of %d in, quorum %d%s)",
                self.publisher.current.round,
                format_ids(waiting),
                len(self._results),
                len(planned),
                self.quorum,
                closes,
            )
