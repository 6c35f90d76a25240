"""What a topology means for one node: the federated groups it belongs to (OpenFed's
``topo.analysis``), with its role in each and who else is in them.

A group is one aggregator and everything that reports to it. A node is in at most two: the
group of its parent (role ``"collaborator"``) and the group it aggregates (role
``"aggregator"``, when child nodes or simulated clients report to it). The upward group comes
first because that is the order of a round for a middle node: receive the model from the
parent, run its own group, send the result back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .graph import Node, Topology, TopologyError

Role = Literal["aggregator", "collaborator"]


@dataclass(frozen=True)
class FederatedGroup:
    """One group seen from one node. ``collaborators`` are child node names in the order the
    edges were added; simulated clients are not nodes, so they are kept apart in ``clients``
    (task client ids) rather than mixed in under made-up names. ``peers`` are the other
    member nodes: the aggregator first, then the collaborators."""

    aggregator: str
    address: str | None
    collaborators: tuple[str, ...]
    clients: tuple[int, ...]
    role: Role
    peers: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """Every member node, the aggregator first."""
        return (self.aggregator, *self.collaborators)

    @property
    def size(self) -> int:
        """How many updates the aggregator combines: child nodes plus simulated clients."""
        return len(self.collaborators) + len(self.clients)


def analysis(topology: Topology, node: Node | str) -> list[FederatedGroup]:
    """The groups ``node`` belongs to, its parent's group first. Validates the topology."""
    topology.validate()
    return _groups_of(topology, _name(topology, node))


def groups(topology: Topology) -> dict[str, list[FederatedGroup]]:
    """``analysis`` for every node, in the order the nodes were added (validated once)."""
    topology.validate()
    return {name: _groups_of(topology, name) for name in topology.nodes}


def depth(topology: Topology, node: Node | str) -> int:
    """Edges from ``node`` up to its root (a root is at depth 0). Validates the topology."""
    topology.validate()
    name, d = _name(topology, node), 0
    while parents := topology.parents(name):
        name, d = parents[0], d + 1
    return d


def levels(topology: Topology) -> list[list[str]]:
    """Node names by depth: the roots, then their children, ... (edge order within a level)."""
    topology.validate()
    out, level = [], topology.roots()
    while level:
        out.append(level)
        level = [c for p in level for c in topology.children(p)]
    return out


def _groups_of(topology: Topology, name: str) -> list[FederatedGroup]:
    # at most one parent in a valid topology
    out = [_group(topology, parent, name, "collaborator") for parent in topology.parents(name)]
    if topology.is_aggregator(name):
        out.append(_group(topology, name, name, "aggregator"))
    return out


def _group(topology: Topology, aggregator: str, me: str, role: Role) -> FederatedGroup:
    node = topology.nodes[aggregator]
    collaborators = tuple(topology.children(aggregator))
    peers = tuple(n for n in (aggregator, *collaborators) if n != me)
    return FederatedGroup(aggregator, node.address, collaborators, node.clients, role, peers)


def _name(topology: Topology, node: Node | str) -> str:
    name = node.name if isinstance(node, Node) else node
    if name not in topology.nodes:
        raise TopologyError([f"unknown node {name!r}; nodes: {', '.join(topology.nodes)}"])
    return name
