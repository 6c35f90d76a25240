"""When the asynchronous loop aggregates, and when a run stops, as objects (OpenFed's names).

fedloom's async loop makes a new global version when the strategy says it is ready (FedBuff's
``buffer_size`` updates, FedAsync's every update) or when one of its triggers is due; a run
stops after ``rounds`` versions or when a callback says so. OpenFed users write the same rules
as ``AggregateCount(count)``, ``AggregatePeriod(period)`` and ``StopAtVersion(max_version)``:
these are those rules, so a trigger given to :class:`~fedloom.federation.async_loop.
AsyncFederation` (``triggers=[...]``) and a stop rule given as a callback behave exactly as
the strategy's count, ``every_seconds`` and ``rounds`` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .loop import Callback

if TYPE_CHECKING:
    from .loop import Federation


class AggregateTrigger(Protocol):
    def due(self, pending: int, waited: float) -> bool:
        """Aggregate now, with ``pending`` updates held and ``waited`` s since the last version?"""
        ...


@dataclass(frozen=True)
class AggregateCount:
    """Aggregate once ``count`` updates are held (FedBuff's ``buffer_size``)."""

    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"AggregateCount: count must be >= 1, got {self.count}")

    def due(self, pending: int, waited: float) -> bool:
        return pending >= self.count


@dataclass(frozen=True)
class AggregatePeriod:
    """Aggregate once ``period`` seconds passed since the last version and an update is held
    (the loop's ``every_seconds``)."""

    period: float

    def __post_init__(self) -> None:
        if not self.period > 0:
            raise ValueError(f"AggregatePeriod: period must be > 0 seconds, got {self.period}")

    def due(self, pending: int, waited: float) -> bool:
        return pending > 0 and waited >= self.period


class StopAtVersion(Callback):
    """Stop after version (round) ``max_version``, as ``rounds = max_version`` does."""

    def __init__(self, max_version: int) -> None:
        if max_version < 1:
            raise ValueError(f"StopAtVersion: max_version must be >= 1, got {max_version}")
        self.max_version = max_version

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool:
        return fed.round >= self.max_version

    def __repr__(self) -> str:
        return f"StopAtVersion(max_version={self.max_version})"
