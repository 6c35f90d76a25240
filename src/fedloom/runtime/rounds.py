"""What the aggregator's transport asks of a kind of round: :class:`RoundService`.

The gRPC handlers, the bulk port and the upload checks are the same for every run; what differs
is who gets work, which uploads are wanted and where an accepted one goes. Synchronous rounds
(:class:`~fedloom.runtime.sync_round.SyncRounds`) hand each sampled client one round and
gather its update for ``collect``; asynchronous ones
(:class:`~fedloom.runtime.async_round.AsyncRounds`) hand the current version to any idle client
within its share and queue updates for ``next_update``. The aggregator picks one at
construction and never asks which it has.

Every method except the loop's own (``distribute``/``collect``, ``publish``/``next_update``/
``base``) is called with the aggregator's lock held.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from ..algorithms.base import RoundPlan
from ..update import ClientUpdate


class RoundService(Protocol):
    """One kind of round, seen from the aggregator's handlers and from the round loop."""

    def config_json(self) -> str:
        """The plan's config sent with a TRAIN instruction."""
        ...

    def work_for(self, cid: int) -> bool:
        """Whether ``cid`` (idle, polling) gets work now; if so, it is marked as given it."""
        ...

    def answered(self, cid: int) -> bool:
        """Whether an update of ``cid`` was already filed for this round."""
        ...

    def claim(self, cid: int, round: int, version: int) -> tuple[bool, bool]:
        """(expected, stale) for an upload of ``cid`` naming ``round``/``version``."""
        ...

    def file(self, update: ClientUpdate, data: bytearray) -> bool:
        """File an accepted update whose values live in ``data``; False if its round closed."""
        ...

    def record_refusal(self, error: ClientUpdate) -> None:
        """Count a refused update as its client's answer (so nobody waits for it)."""
        ...

    def receive_buffer(self, n: int) -> bytearray:
        """A buffer of ``n`` bytes to receive an upload into."""
        ...

    def release(self, data: bytearray) -> None:
        """``data`` (from :meth:`receive_buffer`) holds no update any more."""
        ...

    def restarted(self, cid: int) -> None:
        """``cid`` checked in again: the work it was given is lost, give it again."""
        ...

    def dropped(self, cid: int) -> None:
        """``cid`` was dropped for silence."""
        ...

    def broken_off(self, cid: int) -> None:
        """An admitted upload of ``cid`` broke off; it may send it again."""
        ...

    # the round loop's side: a sync loop calls the first two, an async loop the other three
    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None: ...
    def collect(self) -> Iterator[ClientUpdate]: ...
    def publish(self, params: torch.Tensor, version: int) -> None: ...
    def next_update(self, timeout: float) -> ClientUpdate | None: ...
    def base(self, version: int) -> torch.Tensor | None: ...
