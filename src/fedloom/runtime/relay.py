"""The engine a relay's :class:`~fedloom.runtime.client.RuntimeClient` trains with.

A relay (``fedloom node``, :func:`fedloom.deploy.relay.run_node`) serves its own clients
behind an :class:`~fedloom.runtime.server.AggregatorServer` and is itself a client of its
parent; its "training" is the edge's own rounds, run by the hierarchical simulation's node
loop (:meth:`~fedloom.simulation.hierarchy.HierarchicalClients._run_node`) with the server in
place of the in-process engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..algorithms.base import RoundPlan
from ..simulation.hierarchy import ROUND_STRIDE
from ..update import ClientUpdate


class EdgeLoop:
    """The engine a relay's :class:`RuntimeClient` trains with: one call, the edge's rounds."""

    def __init__(self, hierarchy: Any, name: str, client_id: int):
        self.hierarchy, self.name, self.client_id = hierarchy, name, client_id
        self.seed = hierarchy.seed
        self.spec = hierarchy.engine.spec
        self._round = -1
        self._params: torch.Tensor | None = None

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        # a parent relay numbers its rounds g + j * ROUND_STRIDE; g is the root's round
        g = round % ROUND_STRIDE
        if g != self._round:  # node rounds count from 0 in every round of the root
            self.hierarchy._runs = {}
        self._round, self._params = g, global_params

    def collect(self) -> Iterator[ClientUpdate]:
        assert self._params is not None, "distribute first"
        update = self.hierarchy._run_node(self.name, self._params, self._round)
        update.client_id = self.client_id
        yield update
