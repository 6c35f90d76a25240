"""Federated topologies (OpenFed's ``topo``): nodes, child -> parent edges, validation, the
federated groups each node belongs to (:func:`analysis`), and a drawing of the graph.

The graph alone: the hierarchical simulation over it is
:class:`fedloom.simulation.HierarchicalClients`, a network relay :mod:`fedloom.deploy.relay`."""

from .analysis import FederatedGroup, analysis, depth, groups, levels
from .draw import draw_topology
from .graph import Node, Topology, TopologyError

__all__ = [
    "FederatedGroup",
    "Node",
    "Topology",
    "TopologyError",
    "analysis",
    "depth",
    "draw_topology",
    "groups",
    "levels",
]
