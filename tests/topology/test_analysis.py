"""``analysis``: the federated groups of each node, with its role and peers (OpenFed's
three-node example, and a 3-level tree whose middle nodes both collaborate and aggregate)."""

from __future__ import annotations

import pytest

import fedloom
from fedloom.topology import (
    FederatedGroup,
    Node,
    Topology,
    TopologyError,
    analysis,
    depth,
    groups,
    levels,
)

ADDRESS = "127.0.0.1:1994"


@pytest.fixture
def seed_example() -> tuple[Topology, Node, Node, Node]:
    """OpenFed's Maintainer example, built the same way."""
    aggregator = fedloom.Node("aggregator", ADDRESS)
    alpha = fedloom.Node("alpha", None)
    beta = fedloom.Node("beta", None)
    topology = fedloom.Topology()
    topology.add_node_list([aggregator, alpha, beta])
    topology.add_edge(alpha, aggregator)
    topology.add_edge(beta, aggregator)
    return topology, aggregator, alpha, beta


def test_seed_example_aggregator(seed_example) -> None:
    topology, aggregator, _, _ = seed_example
    props = fedloom.analysis(topology, aggregator)
    assert props == [
        FederatedGroup(
            "aggregator", ADDRESS, ("alpha", "beta"), (), "aggregator", ("alpha", "beta")
        )
    ]
    assert props[0].members == ("aggregator", "alpha", "beta") and props[0].size == 2


@pytest.mark.parametrize(
    "who, peers", [("alpha", ("aggregator", "beta")), ("beta", ("aggregator", "alpha"))]
)
def test_seed_example_collaborators(seed_example, who: str, peers: tuple[str, ...]) -> None:
    topology = seed_example[0]
    node = topology.nodes[who]
    props = analysis(topology, node)
    assert analysis(topology, who) == props  # a Node or its name
    assert props == [
        FederatedGroup("aggregator", ADDRESS, ("alpha", "beta"), (), "collaborator", peers)
    ]


def three_levels() -> Topology:
    """root <- edge_a <- (c0, c1); root <- edge_b <- c2, plus simulated clients 10, 11."""
    topo = Topology()
    topo.add_node_list(
        [
            Node("root", "r:1"),
            Node("edge_a", "a:1"),
            Node("edge_b", "b:1", (10, 11)),
            Node("c0", clients=(0, 1)),
            Node("c1"),
            Node("c2"),
        ]
    )
    for child, parent in [
        ("edge_a", "root"),
        ("edge_b", "root"),
        ("c0", "edge_a"),
        ("c1", "edge_a"),
        ("c2", "edge_b"),
    ]:
        topo.add_edge(child, parent)
    return topo


def test_three_levels_every_node() -> None:
    topo = three_levels()
    root_group = ("root", "r:1", ("edge_a", "edge_b"), ())
    a_group = ("edge_a", "a:1", ("c0", "c1"), ())
    expect = {
        "root": [FederatedGroup(*root_group, "aggregator", ("edge_a", "edge_b"))],
        "edge_a": [  # a middle node: its parent's group first, then its own
            FederatedGroup(*root_group, "collaborator", ("root", "edge_b")),
            FederatedGroup(*a_group, "aggregator", ("c0", "c1")),
        ],
        "edge_b": [
            FederatedGroup(*root_group, "collaborator", ("root", "edge_a")),
            FederatedGroup("edge_b", "b:1", ("c2",), (10, 11), "aggregator", ("c2",)),
        ],
        "c0": [  # a leaf with simulated clients aggregates them in a group of its own
            FederatedGroup(*a_group, "collaborator", ("edge_a", "c1")),
            FederatedGroup("c0", None, (), (0, 1), "aggregator", ()),
        ],
        "c1": [FederatedGroup(*a_group, "collaborator", ("edge_a", "c0"))],
        "c2": [FederatedGroup("edge_b", "b:1", ("c2",), (10, 11), "collaborator", ("edge_b",))],
    }
    assert groups(topo) == expect
    for name, want in expect.items():
        assert analysis(topo, name) == want
    assert [g.role for g in analysis(topo, "edge_a")] == ["collaborator", "aggregator"]
    assert analysis(topo, "edge_b")[1].size == 3  # a child node and two simulated clients


def test_depth_and_levels() -> None:
    topo = three_levels()
    assert levels(topo) == [["root"], ["edge_a", "edge_b"], ["c0", "c1", "c2"]]
    assert [depth(topo, n) for n in ("root", "edge_b", "c2")] == [0, 1, 2]


def test_a_lone_node_is_in_no_group() -> None:
    topo = Topology()
    topo.add_node(Node("alone"))
    assert analysis(topo, "alone") == [] and groups(topo) == {"alone": []}


def test_analysis_validates_and_names_unknown_nodes(seed_example) -> None:
    topology = seed_example[0]
    with pytest.raises(TopologyError, match="unknown node 'gamma'; nodes: aggregator, alpha, beta"):
        analysis(topology, "gamma")
    topology.add_edge("aggregator", "alpha")
    with pytest.raises(TopologyError, match="cycle aggregator -> alpha -> aggregator"):
        analysis(topology, "beta")
