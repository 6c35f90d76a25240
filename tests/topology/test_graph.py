"""Topology validation (every invalid graph names its nodes) and the config section."""

from __future__ import annotations

import pytest

from fedloom import ConfigError, load_config
from fedloom.topology import Node, Topology, TopologyError
from fedloom.topology.graph import format_clients, parse_clients


def build(nodes: list[Node], edges: list[tuple[str, str]]) -> Topology:
    topo = Topology()
    topo.add_node_list(nodes)
    for child, parent in edges:
        topo.add_edge(child, parent)
    return topo


def problems(topo: Topology, network: bool = False) -> str:
    with pytest.raises(TopologyError) as err:
        topo.validate(network=network)
    assert isinstance(err.value, ConfigError)  # the CLI reports it like any config error
    return str(err.value)


def test_a_valid_tree_validates_and_returns_itself() -> None:
    topo = build([Node("root", "h:1"), Node("a", "h:2", [0, 1]), Node("b")], [("a", "root")])
    assert topo.validate(network=True) is topo
    assert topo.nodes["a"].clients == (0, 1)  # a list from user code becomes a tuple
    assert topo.roots() == ["root", "b"] and topo.is_aggregator("a") and not topo.is_aggregator("b")


def test_dangling_edges_name_the_unknown_nodes() -> None:
    msg = problems(build([Node("agg"), Node("alpha")], [("alpha", "agg"), ("ghost", "phantom")]))
    assert "edge ghost -> phantom names unknown node(s) 'ghost', 'phantom'" in msg
    assert "alpha" not in msg


def test_self_loop() -> None:
    msg = problems(build([Node("agg")], [("agg", "agg")]))
    assert "edge agg -> agg: node 'agg' cannot aggregate itself" in msg


def test_duplicate_edge() -> None:
    msg = problems(build([Node("agg"), Node("alpha")], [("alpha", "agg"), ("alpha", "agg")]))
    assert "edge alpha -> agg is declared twice" in msg


def test_two_parents() -> None:
    topo = build([Node("p1"), Node("p2"), Node("alpha")], [("alpha", "p1"), ("alpha", "p2")])
    msg = problems(topo)
    assert "node 'alpha' has two parents ('p1' and 'p2')" in msg


def test_cycle_names_its_nodes_in_order_once() -> None:
    nodes = [Node(n) for n in ("x", "a", "b", "c")]
    msg = problems(build(nodes, [("a", "b"), ("b", "c"), ("c", "a"), ("x", "a")]))
    assert "cycle a -> b -> c -> a" in msg and msg.count("cycle") == 1


def test_every_problem_is_listed() -> None:
    topo = build([Node("a"), Node("b")], [("a", "a"), ("b", "zed")])
    with pytest.raises(TopologyError) as info:
        topo.validate()
    err = info.value
    assert len(err.problems) == 2 and "'zed'" in err.problems[1]


def test_clients_attached_twice() -> None:
    msg = problems(build([Node("e0", clients=(0, 1)), Node("e1", clients=(1, 2))], []))
    assert "client 1 is attached to both 'e0' and 'e1'" in msg
    assert "client 3 is attached twice under 'e2'" in problems(
        build([Node("e2", clients=(3, 3))], [])
    )


def test_empty_topology() -> None:
    assert "it has no nodes" in problems(Topology())


def test_network_aggregators_need_their_own_address() -> None:
    topo = build([Node("agg"), Node("alpha"), Node("edge", clients=(0,))], [("alpha", "agg")])
    topo.validate()  # a simulation does without addresses
    msg = problems(topo, network=True)
    assert "aggregator 'agg' has no address" in msg and "aggregator 'edge' has no address" in msg
    assert "alpha" not in msg  # a plain collaborator does not listen
    twins = build([Node("r", "h:1"), Node("e", "h:1", clients=(0,))], [("e", "r")])
    assert "aggregators 'r' and 'e' share h:1" in problems(twins, network=True)


# -- the config section -------------------------------------------------------------------
SECTION = {
    "nodes": [
        {"name": "root", "address": "127.0.0.1:50060"},
        {"name": "mid", "address": "127.0.0.1:50061", "clients": "0-3,7"},
        {"name": "leaf", "clients": [4, 5]},
    ],
    "edges": [["mid", "root"], ["leaf", "mid"]],
}


def test_config_round_trip() -> None:
    topo = Topology.from_config(SECTION)
    assert topo.nodes["mid"] == Node("mid", "127.0.0.1:50061", (0, 1, 2, 3, 7))
    assert topo.edges == [("mid", "root"), ("leaf", "mid")]
    out = topo.to_config()
    assert out["nodes"][2] == {"name": "leaf", "clients": "4-5"}
    again = Topology.from_config(out)
    assert again.nodes == topo.nodes and again.edges == topo.edges


@pytest.mark.parametrize(
    "spec, ids", [("0-19", tuple(range(20))), ("5", (5,)), ("0-1, 9,3-4", (0, 1, 9, 3, 4))]
)
def test_client_ranges(spec: str, ids: tuple[int, ...]) -> None:
    assert parse_clients(spec) == ids
    assert parse_clients(format_clients(ids)) == ids


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"nodes": [{"address": "h:1"}]}, "nodes[0]: needs a name"),
        ({"nodes": [{"name": "a", "port": 1}]}, "node 'a': unknown key(s) ['port']"),
        ({"nodes": [{"name": "a"}, {"name": "a"}]}, "node 'a' is declared twice"),
        ({"nodes": [{"name": "a", "clients": "9-2"}]}, "range '9-2' runs backwards"),
        ({"nodes": [{"name": "a", "clients": "x"}]}, "node 'a': clients 'x'"),
        ({"nodes": [{"name": "a", "clients": [-1]}]}, "node 'a': clients must be ids >= 0"),
        ({"nodes": [{"name": "a"}], "edges": [["a"]]}, "edges[0]: expected [child, parent]"),
    ],
)
def test_from_config_rejections(section: dict, needle: str) -> None:
    with pytest.raises(TopologyError) as err:
        Topology.from_config(section)
    assert needle in str(err.value)


def test_config_section_is_validated_with_the_run() -> None:
    cfg = load_config({"data": {"num_clients": 8}, "topology": SECTION})
    assert cfg.topology is not None and cfg.topology.edge_rounds == 1
    assert Topology.from_config(cfg.topology).to_config()["edges"] == SECTION["edges"]
    assert load_config({}).topology is None


@pytest.mark.parametrize(
    "topology, needle",
    [
        ({**SECTION, "edges": [["mid", "root"], ["root", "mid"]]}, "cycle root -> mid -> root"),
        ({**SECTION, "edges": [["leaf", "nowhere"]]}, "'nowhere'"),
        (SECTION | {"edge_strategy": {"name": "nope"}}, "unknown strategy 'nope'"),
        (SECTION | {"edge_strategy": {"lr": 1}}, "unknown key(s) ['lr']"),
        (SECTION | {"edge_rounds": 0}, "topology.edge_rounds"),
    ],
)
def test_config_rejections(topology: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"data": {"num_clients": 8}, "topology": topology})
    assert needle in str(err.value)


def test_config_clients_must_exist() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"data": {"num_clients": 6}, "topology": SECTION})
    assert "node 'mid' has client 7, but data.num_clients = 6" in str(err.value)


def test_a_long_list_of_problems_is_cut_short_in_the_message() -> None:
    topo = build([Node("r")], [(f"n{i}", "r") for i in range(25)])
    with pytest.raises(TopologyError) as info:
        topo.validate()
    err = info.value
    assert len(err.problems) == 25 and str(err).endswith("'n9'; ... and 15 more")
