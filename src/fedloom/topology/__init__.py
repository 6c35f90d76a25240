"""Federated topologies (OpenFed's ``topo``): nodes, child -> parent edges, validation, the
federated groups each node belongs to (:func:`analysis`), and a drawing of the graph."""

from .analysis import FederatedGroup, analysis, depth, groups, levels
from .draw import draw_topology
from .graph import Node, Topology, TopologyError
from .hierarchy import ROUND_STRIDE, HierarchicalClients, NodeMetrics

__all__ = [
    "FederatedGroup",
    "HierarchicalClients",
    "Node",
    "NodeMetrics",
    "ROUND_STRIDE",
    "Topology",
    "TopologyError",
    "analysis",
    "depth",
    "draw_topology",
    "groups",
    "levels",
]
