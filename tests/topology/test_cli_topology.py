"""``fedloom topology CONFIG``: the groups of every node, and the graph drawn to a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.topology import Node, Topology, draw_topology

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hierarchy.toml"

CONFIG = """\
name = "tree"
[data]
num_clients = 6
[output]
dir = '{out}'
[topology]
edges = [["mid", "root"], ["leaf", "mid"], ["other", "root"]]
nodes = [
  {{ name = "root", address = "127.0.0.1:50060" }},
  {{ name = "mid", clients = "0-3" }},
  {{ name = "leaf", clients = [4, 5] }},
  {{ name = "other" }},
]
"""

EXPECTED = """\
tree: 4 nodes in 3 levels, 6 simulated clients; edge_rounds 1
root (127.0.0.1:50060)
  aggregator   of group 'root': peers mid, other
mid
  collaborator in group 'root': peers root, other
  aggregator   of group 'mid': peers leaf; clients 0-3 (4)
other
  collaborator in group 'root': peers root, mid
leaf
  collaborator in group 'mid': peers mid
  aggregator   of group 'leaf': clients 4-5 (2)
note: for a networked run: aggregator 'mid' has no address to listen on; \
aggregator 'leaf' has no address to listen on
"""


def test_cli_prints_groups_and_draws_the_default_png(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tree.toml"
    path.write_text(CONFIG.format(out=(tmp_path / "runs").as_posix()))
    assert main(["topology", str(path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "runs" / "tree" / "figures" / "topology.png"
    assert out == EXPECTED + f"figure: {png}\n"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 1000


def test_cli_example_with_set_and_png(tmp_path: Path, capsys) -> None:
    png = tmp_path / "t.png"
    assert (
        main(["topology", str(EXAMPLE), "--set", "topology.edge_rounds=3", "--png", str(png)]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("hierarchy: 5 nodes in 2 levels, 40 simulated clients; edge_rounds 3\n")
    assert (
        "edge2 (127.0.0.1:50063)\n  collaborator in group 'root': peers root, edge0, edge1, edge3"
        in out
    )
    assert "  aggregator   of group 'edge3': clients 30-39 (10)\n" in out
    assert "note:" not in out  # every aggregator of the example has an address
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ([], "no [topology] section (see examples/hierarchy.toml)"),
        (
            ["topology.nodes=[{name='a'},{name='b'}]", "topology.edges=[['a','b'],['b','a']]"],
            "cycle a -> b -> a",
        ),
    ],
)
def test_cli_errors_exit_2(tmp_path: Path, capsys, overrides: list[str], needle: str) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(f"[output]\ndir = '{(tmp_path / 'runs').as_posix()}'\n")
    argv = ["topology", str(path)] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fedloom: error: ") and needle in err
    assert not (tmp_path / "runs").exists()


def test_draw_topology_returns_the_path(tmp_path: Path) -> None:
    topo = Topology()
    topo.add_node_list([Node("solo", clients=(0,)), Node("root"), Node("kid")])
    topo.add_edge("kid", "root")
    out = draw_topology(topo, tmp_path / "sub" / "forest.png")
    assert out == tmp_path / "sub" / "forest.png" and out.read_bytes().startswith(b"\x89PNG")
