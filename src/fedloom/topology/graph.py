"""A federated topology: named nodes and directed edges from a child to the node that
aggregates it (OpenFed's ``topo.Topology``), so clients -> edge aggregators -> root of any
depth, and a node can collaborate in one group while aggregating another.

Simulated data holders are not listed one by one: a node's ``clients`` are the task's client
ids attached under it (an edge aggregator with 20 clients is one node with 20 ids). A node may
have both ``clients`` and child nodes; it then aggregates both in its one group.

The model is a forest: every node has at most one parent, i.e. it collaborates in at most one
upward group (OpenFed's "a node with two parents in one group" is ruled out by construction,
since a node's upward group *is* its parent's). Several roots are allowed here; a runner that
needs a single root says so itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import TopologyError as TopologyError  # its published home

NODE_KEYS = ("name", "address", "clients")


@dataclass(frozen=True)
class Node:
    """A participant. ``address`` is where it listens (``host:port``) if it aggregates over
    the network; ``clients`` are simulated data holders (task client ids) under it."""

    name: str
    address: str | None = None
    clients: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:  # a list from user code or a config still hashes
        object.__setattr__(self, "clients", tuple(int(c) for c in self.clients))


class Topology:
    """Nodes and child -> parent edges. Build it, then ``validate()`` (or let ``analysis``)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[tuple[str, str]] = []  # (child, parent), in the order added

    def add_node(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def add_node_list(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.add_node(n)

    def add_edge(self, child: Node | str, parent: Node | str) -> None:
        """``child`` sends its model to ``parent``, which aggregates it."""
        c = child.name if isinstance(child, Node) else child
        p = parent.name if isinstance(parent, Node) else parent
        self.edges.append((c, p))

    def parents(self, name: str) -> list[str]:
        return [p for c, p in self.edges if c == name]

    def children(self, name: str) -> list[str]:
        return [c for c, p in self.edges if p == name]

    def roots(self) -> list[str]:
        """Nodes that send to nobody, in the order they were added."""
        return [n for n in self.nodes if not self.parents(n)]

    def is_aggregator(self, name: str) -> bool:
        """A node aggregates a group when child nodes or simulated clients report to it."""
        return bool(self.children(name) or self.nodes[name].clients)

    def validate(self, network: bool = False) -> Topology:
        """Raise :class:`TopologyError` listing every problem; return ``self`` if none.

        ``network=True`` is for a real deployment, where every aggregator must listen
        somewhere: one without an address is an error too.
        """
        problems = _problems(self, network)
        if problems:
            raise TopologyError(problems)
        return self

    # -- config -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any) -> Topology:
        """Build from a ``[topology]`` section (a dict, or the pydantic ``TopologyConfig``):
        ``nodes = [{name, address?, clients?}]`` with clients a list or ``"0-19"`` (inclusive
        ranges, comma-separated), ``edges = [[child, parent], ...]``. Not validated yet."""
        if hasattr(section, "model_dump"):
            section = section.model_dump()
        topo, problems = cls(), []
        for i, spec in enumerate(section.get("nodes", [])):
            name = spec.get("name") if isinstance(spec, Mapping) else None
            if not isinstance(name, str) or not name:
                problems.append(f"nodes[{i}]: needs a name (got {spec!r})")
                continue
            if extra := sorted(set(spec) - set(NODE_KEYS)):
                problems.append(f"node {name!r}: unknown key(s) {extra}; allowed: {NODE_KEYS}")
            if name in topo.nodes:
                problems.append(f"node {name!r} is declared twice")
            try:
                clients = parse_clients(spec.get("clients", ()))
            except ValueError as e:
                problems.append(f"node {name!r}: {e}")
                continue
            topo.add_node(Node(name, spec.get("address"), clients))
        for i, edge in enumerate(section.get("edges", [])):
            if isinstance(edge, str) or len(edge) != 2:
                problems.append(f"edges[{i}]: expected [child, parent] (got {edge!r})")
                continue
            topo.add_edge(str(edge[0]), str(edge[1]))
        if problems:
            raise TopologyError(problems)
        return topo

    def to_config(self) -> dict[str, Any]:
        """The ``[topology]`` section that rebuilds this topology (``from_config``)."""
        nodes = []
        for n in self.nodes.values():
            spec: dict[str, Any] = {"name": n.name}
            if n.address is not None:  # TOML has no null
                spec["address"] = n.address
            if n.clients:
                spec["clients"] = format_clients(n.clients)
            nodes.append(spec)
        return {"nodes": nodes, "edges": [[c, p] for c, p in self.edges]}

    def __repr__(self) -> str:
        return f"Topology({len(self.nodes)} nodes, {len(self.edges)} edges)"


def parse_clients(spec: str | Iterable[int]) -> tuple[int, ...]:
    """``[0, 1, 5]`` or ``"0-19"`` or ``"0-9,20-29,35"`` -> client ids (ranges inclusive)."""
    if not isinstance(spec, str):
        ids = list(spec)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ids):
            raise ValueError(f"clients must be ids >= 0 (got {ids!r})")
        return tuple(ids)
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        if not (lo.strip().isdigit() and (not sep or hi.strip().isdigit())):
            raise ValueError(f"clients {spec!r}: expected ids or ranges like '0-19'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"clients {spec!r}: range {part!r} runs backwards")
        out.extend(range(first, last + 1))
    return tuple(out)


def format_clients(ids: Iterable[int]) -> str:
    """Client ids as compact inclusive ranges, ``"0-9,12"`` (the inverse of parse_clients)."""
    ids, parts = list(ids), []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            lo, hi = ids[start], ids[i - 1]
            parts.append(str(lo) if lo == hi else f"{lo}-{hi}")
            start = i
    return ",".join(parts)


def _problems(topo: Topology, network: bool) -> list[str]:
    """Every structural problem of ``topo``, each naming its nodes (for TopologyError)."""
    if not topo.nodes:
        return ["it has no nodes"]
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    parent_of: dict[str, str] = {}
    owner: dict[int, str] = {}
    for c, p in topo.edges:
        unknown = [n for n in dict.fromkeys((c, p)) if n not in topo.nodes]
        if unknown:
            out.append(f"edge {c} -> {p} names unknown node(s) {', '.join(map(repr, unknown))}")
        elif c == p:
            out.append(f"edge {c} -> {p}: node {c!r} cannot aggregate itself")
        elif (c, p) in seen:
            out.append(f"edge {c} -> {p} is declared twice")
        elif c in parent_of:
            out.append(
                f"node {c!r} has two parents ({parent_of[c]!r} and {p!r}); "
                "a node collaborates in one upward group only"
            )
        else:
            parent_of[c] = p
        seen.add((c, p))
    order = {name: i for i, name in enumerate(topo.nodes)}
    for start in topo.nodes:  # with one parent each, a cycle is a parent chain that loops
        path, on_path = [start], {start}
        while (up := parent_of.get(path[-1])) is not None and up not in on_path:
            path.append(up)
            on_path.add(up)
        # report each cycle once: from its first node, and only if the chain returns there
        if up == start and min(path, key=order.__getitem__) == start:
            out.append("cycle " + " -> ".join([*path, start]))
    for n in topo.nodes.values():
        for cid in n.clients:
            if cid in owner:
                twice = owner[cid] == n.name
                where = (
                    f"twice under {n.name!r}" if twice else f"to both {owner[cid]!r} and {n.name!r}"
                )
                out.append(f"client {cid} is attached {where}")
            owner[cid] = n.name
    if network:  # a real deployment: every aggregator listens, each on its own address
        listening: dict[str, str] = {}
        for name, n in topo.nodes.items():
            if not topo.is_aggregator(name):
                continue
            if not n.address:
                out.append(f"aggregator {name!r} has no address to listen on")
            elif n.address in listening:
                out.append(f"aggregators {listening[n.address]!r} and {name!r} share {n.address}")
            else:
                listening[n.address] = name
    return out
