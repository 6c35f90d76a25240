"""Asynchronous rounds (FedAsync, FedBuff): versions instead of rounds, no waiting for anyone.

``publish`` makes a version the model any idle client is handed; the last ``keep_versions``
are kept, so an update trained on an older one is still accepted (the strategy weighs it by
its staleness against :meth:`base`). Accepted updates queue for ``next_update`` in the order
they arrive. So that one fast (or lazy) client cannot take the run over, a client holding
``max_share`` times its fair share of the recent updates waits before it gets work again.
"""

from __future__ import annotations

import collections
import itertools
import math
import queue
import threading
from collections.abc import Iterator

import torch

from ..algorithms.base import RoundPlan
from ..errors import FedloomError
from ..update import ClientUpdate
from .membership import Membership
from .publish import Publisher


class AsyncRounds:
    """The :class:`~fedloom.runtime.rounds.RoundService` of asynchronous strategies.

    Args:
        max_share: the most one client may contribute of the recent updates, as a multiple
            of its fair share (1 / live clients). Must be > 1: at exactly 1, every client can
            hold its fair share while none is training, and then none may be given work again.
    """

    def __init__(
        self,
        cv: threading.Condition,
        publisher: Publisher,
        membership: Membership,
        *,
        max_share: float,
    ):
        if not max_share > 1:  # at exactly 1 every client can be at its cap, idle: a wedge
            raise ValueError(f"async_max_share must be > 1, got {max_share}")
        self.cv, self.publisher, self.membership = cv, publisher, membership
        self.max_share = max_share
        self._busy: set[int] = set()  # clients training
        self._recent: collections.deque[int] = collections.deque(maxlen=4096)  # accepted, by id
        self._queue: queue.Queue[ClientUpdate] = queue.Queue()

    # -- the round loop's side ------------------------------------------------------------
    def publish(self, params: torch.Tensor, version: int) -> None:
        """Make ``version`` the model idle clients get; keep recent ones for stale uploads."""
        published = self.publisher.serialize(params, version + 1, version)
        with self.cv:
            base = published.base if published.base is not None else params.detach().clone()
            self.publisher.keep(published, base)
            self.publisher.current = published
            self.cv.notify_all()

    def next_update(self, timeout: float) -> ClientUpdate | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            with self.cv:
                self.membership.drop_silent()
            return None

    def base(self, version: int) -> torch.Tensor | None:
        """The model of ``version``, or None once it is too old to be kept."""
        with self.cv:
            return self.publisher.kept(version)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        raise FedloomError("this aggregator runs asynchronous rounds; distribute is for sync ones")

    def collect(self) -> Iterator[ClientUpdate]:
        raise FedloomError("this aggregator runs asynchronous rounds; use next_update")

    # -- the handlers' side (lock held) -------------------------------------------------------
    def config_json(self) -> str:
        return "{}"

    def work_for(self, cid: int) -> bool:
        todo = cid not in self._busy and self.publisher.any_kept and self.within_share(cid)
        if todo:
            self._busy.add(cid)
        return todo

    def within_share(self, cid: int) -> bool:
        """Whether ``cid`` holds less than ``max_share`` times its fair share of the last
        ``2 x live`` accepted updates."""
        live = max(1, len(self.membership.members))
        window = list(itertools.islice(reversed(self._recent), 2 * live))
        if len(window) < 2 * live:
            return True
        return window.count(cid) < max(1, math.ceil(self.max_share * len(window) / live))

    def answered(self, cid: int) -> bool:
        return False  # a client answers once per version it is given; nothing to refuse twice

    def claim(self, cid: int, round: int, version: int) -> tuple[bool, bool]:
        expected = cid in self._busy
        self._busy.discard(cid)
        return expected, not self.publisher.keeps(version)

    def file(self, update: ClientUpdate, data: bytearray) -> bool:
        self._recent.append(update.client_id)  # the share window sees accepts in queue order
        self._queue.put(update)
        return True

    def record_refusal(self, error: ClientUpdate) -> None:
        self._queue.put(error)

    def receive_buffer(self, n: int) -> bytearray:
        return bytearray(n)  # an update outlives its round here: no buffer comes back

    def release(self, data: bytearray) -> None:
        del data

    def restarted(self, cid: int) -> None:
        self._busy.discard(cid)

    def dropped(self, cid: int) -> None:
        self._busy.discard(cid)

    def broken_off(self, cid: int) -> None:
        self._busy.add(cid)  # still training, as far as the upload goes: it may send again
