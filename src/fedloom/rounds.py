"""One round's bookkeeping, shared by every loop that runs rounds.

The synchronous loop (:class:`~fedloom.federation.loop.Federation`), the asynchronous one
(each new version is a round) and every edge of a simulated hierarchy sample clients with a
seeded generator, count what comes back (accepted, rejected, samples, the sample-weighted
loss, each client's seconds) and time the round. They did it three times over; this module
is the one copy, so the record keys (``clients``, ``rejected``, ``samples``, ``train_loss``,
``bytes_up``, ...) mean the same wherever they are written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .seeding import derive_seed
from .update import ClientUpdate


def sampling_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """The generator a strategy samples a round's clients with: one per (run seed, stream,
    round ids), so a resumed or relaunched run samples exactly the same clients."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))


@dataclass
class RoundTally:
    """What one round received and how long it has run.

    ``peaks`` holds, per client, the magnitude of its buffer's sum (computed by the loop's
    finite check), to name the largest contributors when an aggregate overflows.
    """

    accepted: int = 0
    rejected: int = 0
    samples: int = 0
    loss_sum: float = 0.0  # sum of each accepted update's loss times its samples
    client_seconds: dict[str, float] = field(default_factory=dict)
    peaks: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def accept(self, u: ClientUpdate) -> None:
        """Count ``u`` as aggregated."""
        self.accepted += 1
        self.samples += u.num_samples
        self.loss_sum += float(u.metrics.get("loss", 0.0)) * u.num_samples
        if "seconds" in u.metrics:
            self.client_seconds[str(u.client_id)] = round(float(u.metrics["seconds"]), 4)

    def reject(self) -> None:
        """Count one update that arrived and was not aggregated."""
        self.rejected += 1

    def counted(self, updates: Iterable[ClientUpdate]) -> Iterator[ClientUpdate]:
        """Pass ``updates`` through, accepting each (for streams that are not checked)."""
        for u in updates:
            self.accept(u)
            yield u

    def void(self) -> None:
        """The round was rolled back: nothing it received counts as aggregated."""
        self.rejected += self.accepted
        self.accepted = self.samples = 0

    @property
    def received(self) -> int:
        return self.accepted + self.rejected

    @property
    def train_loss(self) -> float:
        """The sample-weighted mean loss of the accepted updates (NaN when none)."""
        return self.loss_sum / self.samples if self.samples else math.nan

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def counts(self) -> dict[str, Any]:
        """The round record's counts: ``clients``, ``rejected``, ``samples``, ``train_loss``."""
        return {
            "clients": self.accepted,
            "rejected": self.rejected,
            "samples": self.samples,
            "train_loss": self.train_loss,
        }
