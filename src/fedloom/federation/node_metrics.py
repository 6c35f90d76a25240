"""The per-node metrics of a hierarchy in each round's record.

A callback of the round loop, so it lives with the loop: the hierarchical simulation
(:class:`~fedloom.simulation.hierarchy.HierarchicalClients`) and a network root over relays
fill it, neither needs to know the loop's callback types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..update import ClientUpdate
from .loop import Callback, Federation


class NodeMetrics(Callback):
    """Copies the hierarchy's per-node metrics into each round's record as ``nodes``.

    Put it before the run directory's recorder in ``callbacks`` so ``metrics.jsonl`` keeps
    them (the record is the dict the recorder writes; callbacks run in order).
    """

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self.names = list(names) if names is not None else None  # the root's children, by id
        self._seen: dict[str, dict[str, Any]] = {}

    def on_update(self, fed: Federation, update: ClientUpdate, error: str | None) -> None:
        """Over the network the relays' metrics arrive with their updates: keep them."""
        if self.names is not None and error is None and update.client_id < len(self.names):
            self._seen[self.names[update.client_id]] = dict(update.metrics)

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> None:
        """A simulated hierarchy (no ``names``) reports its nodes through the backend's
        :meth:`~fedloom.backend.BackendBase.node_metrics`; a network root got them above."""
        nodes = fed.backend.node_metrics() if self.names is None else self._seen
        if nodes:
            record["nodes"] = {name: dict(m) for name, m in nodes.items()}
        self._seen = {}
