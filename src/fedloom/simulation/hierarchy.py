"""Hierarchical federated learning in simulation: clients -> edge aggregators -> root.

HierFAVG (Liu, Zhang, Song & Letaief 2020, "Client-Edge-Cloud Hierarchical Federated
Learning"): every edge aggregator runs a small federation of its own over the clients (or
the lower edges) under it, ``edge_rounds`` rounds per global round, starting each global
round from the root's model; the root then averages the edges' models, each weighted by the
samples under it. Edge links are short and cheap, the root's links are few: per global
round the root sends and receives one model per edge instead of one per client.

:class:`HierarchicalClients` is a :class:`~fedloom.federation.loop.Backend` for the ROOT's
:class:`~fedloom.federation.loop.Federation`: the root's "clients" are its child nodes, so
the Federation's strategy samples edges and aggregates their models, and checkpoints,
evaluation, callbacks and the run directory work unchanged::

    backend = HierarchicalClients(task, topology, seed=0, edge_rounds=2)
    Federation(task, FedAvg(), backend=backend, rounds=30, seed=0).run()

A flat topology (the root has clients attached and no child nodes) delegates to one
:class:`~fedloom.simulation.engine.InProcessClients`, so it is plain FedAvg bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..algorithms.base import RoundPlan, Strategy
from ..algorithms.fedavg import FedAvg
from ..backend import BackendBase
from ..errors import CheckpointError
from ..rounds import RoundTally, sampling_rng
from ..task import Task
from ..topology.graph import Topology
from ..update import ClientUpdate
from ..wire import encode
from .engine import InProcessClients

# A client trains at most once per edge round; its j-th training within global round g (its
# edge's j-th round in g) gets round id g + j * ROUND_STRIDE. With j = 0 that is g itself,
# so with one edge round per global round every client is seeded exactly as a flat run's
# round g seeds it (same shuffles, same dropout), and later edge rounds get fresh seeds.
ROUND_STRIDE = 1 << 32

EdgeStrategy = Strategy | Callable[[str], Strategy]


@dataclass
class _NodeTally(RoundTally):
    """What one node round received from its participants, and what went on below them."""

    client_updates: int = 0  # client trainings in the participants' subtrees
    link_bytes: int = 0  # bytes on the links below the participants (their subtrees)

    def counted_below(self, updates: Iterable[ClientUpdate], leaf: bool) -> Iterator[ClientUpdate]:
        """Pass ``updates`` through, accepting each and adding up its subtree's figures."""
        for u in self.counted(updates):
            self.client_updates += 1 if leaf else int(u.metrics.get("client_updates", 0))
            if not leaf:
                self.link_bytes += int(u.metrics.get("link_bytes", 0))
            yield u


class HierarchicalClients(BackendBase):
    """The clients of a hierarchy, seen from its root (a Backend).

    The root's Federation sees the root's child nodes as clients with integer ids: their
    index among the root's children in the order the edges were added (:attr:`names`,
    :attr:`ids`). Each sampled edge, in plan order:

    1. copies the root's model into its own buffer (one per node, reused);
    2. runs ``edge_rounds`` rounds: its strategy samples among its participants (the task
       client ids attached to it, or its own child nodes, recursively, for any depth) with
       an rng derived from ``(seed, node name, global round, edge round)``; clients train on
       one shared :class:`InProcessClients` engine (one model for the whole tree), a
       client's training in its edge's j-th round of global round g under round id
       ``g + j * ROUND_STRIDE`` (so with one edge round, exactly as in a flat run's round g);
       the strategy aggregates into the edge's buffer;
    3. yields ``ClientUpdate(edge id, its buffer, num_samples, metrics)``.

    ``num_samples`` is HierFAVG's |D^l|: the samples of ALL clients under the edge, not only
    of those that trained in its last round. The edge's model stands for its whole
    population (over several edge rounds with sampling it has seen more clients than the
    last round's), and the weight stays fixed from round to round. With full participation
    the two definitions agree, and the root's weighted average of the edges' weighted
    averages is then the flat weighted average over all clients.

    Every node is a tree node with either clients or child nodes (not both): put clients
    that report straight to an aggregator under a node of their own. Clients run the client
    part of their edge's strategy (FedProx, SCAFFOLD at an edge work); the root's plan is
    not passed down, so a root plan with client settings (a client part, the Federation's
    stragglers) is refused.
    Strategies that must ``prepare`` the model (FedPer, Ditto, IFCA, clustered FL) run only
    at the root. Edges do not check their clients' updates (in simulation they are the
    engine's own buffers); a non-finite edge model is rejected by the root's Federation.

    Per node and global round, :meth:`node_metrics` gives the rounds it ran, the client
    trainings in its subtree, its last round's train loss, the bytes on its own links and
    its seconds; :class:`~fedloom.federation.node_metrics.NodeMetrics` copies them into each
    round's record. Each edge's update carries its own in ``metrics`` too (``loss``,
    ``client_updates``, ``edge_rounds``, ``trained_samples``, ``link_bytes``, ``seconds``).

    Args:
        task: the user's task.
        topology: nodes and child -> parent edges; ``topology.validate()`` is called first.
        seed: the run seed (the Federation's).
        root: the node the Federation runs at; the topology's only root by default.
        edge_strategy: each non-root node's strategy: None (``FedAvg(fraction=1.0)``), one
            Strategy (deep-copied per node, so nodes never share state), a factory called
            with the node's name, or a mapping from node name to either (missing nodes get
            the default).
        edge_rounds: edge rounds per global round (HierFAVG's kappa_2), one number or a
            mapping from node name (missing nodes: 1).
        state_memory_mb: the engine's memory budget for per-client state
            (see :class:`InProcessClients`).

    Raises:
        TopologyError: (a ValueError) from ``topology.validate()``.
        ValueError: naming the node, for a node without clients and child nodes, with both,
            with client ids out of range or repeated, a client under two nodes, a node with
            two parents, a cycle, an unknown name in a mapping, ``edge_rounds < 1``.
    """

    def __init__(
        self,
        task: Task,
        topology: Topology,
        seed: int = 0,
        *,
        root: str | None = None,
        edge_strategy: EdgeStrategy | Mapping[str, EdgeStrategy] | None = None,
        edge_rounds: int | Mapping[str, int] = 1,
        state_memory_mb: float | None = None,
    ):
        self.task, self.topology, self.seed = task, topology, seed
        self.state_memory_mb = state_memory_mb
        topology.validate()  # the whole graph's structure; then what a simulation needs
        self.root = _pick_root(topology, root)
        self._children, self._clients = _tree(task, topology, self.root)
        self.flat = not self._children[self.root]
        self.names: list[str] = list(self._children[self.root])  # root id -> child node
        self.ids: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        below = [n for n in self._children if n != self.root]
        self.strategies: dict[str, Strategy] = _strategies(edge_strategy, below, self.root)
        self.edge_rounds: dict[str, int] = _edge_rounds(edge_rounds, below, self.root)
        self.node_rounds: dict[str, int] = dict.fromkeys(below, 0)  # each node's own rounds
        self.population: dict[str, int] = {}  # samples under each node
        for name in reversed(list(self._children)):  # children come after their parent
            own = sum(task.num_samples(c) for c in self._clients[name])
            self.population[name] = own + sum(self.population[c] for c in self._children[name])
        self._nodes: dict[str, dict[str, float]] = {}  # node_metrics() of the last round
        self._engine: InProcessClients | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._snapshots: dict[str, torch.Tensor] = {}
        self._global: torch.Tensor | None = None
        self._plan, self._round = RoundPlan([]), 0
        self._runs: dict[str, int] = {}  # node rounds run so far in this global round
        # nodes whose children are reached through ``engine`` (a relay's server) rather than
        # simulated here: a relay of relays over the network
        self.served: set[str] = set()
        self._wire_bytes = 0

    # -- the engine --------------------------------------------------------------------------
    @property
    def engine(self) -> InProcessClients:
        """The one in-process engine every client of the tree trains on.

        Built on first use, i.e. after the Federation's strategy has prepared the task (FedPer
        names personal layers there), so its layout matches the root's model.
        """
        if self._engine is None:
            self._engine = InProcessClients(self.task, self.seed, self.state_memory_mb)
            flat = self._engine.flat
            self._wire_bytes = len(encode(flat, self._engine.spec, {"round": 0, "version": 0}))
        return self._engine

    @property
    def wire_bytes(self) -> int:
        """Bytes of one model on the wire (as the Federation counts them on the root's links)."""
        self.engine  # noqa: B018 - builds the engine, which measures the model
        return self._wire_bytes

    # -- Backend -----------------------------------------------------------------------------
    def available_clients(self, round: int) -> list[int]:
        if self.flat:
            return list(self._clients[self.root])
        return list(range(len(self.names)))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        if self.flat:
            self.engine.distribute(round, plan, global_params)
            return
        if plan.for_clients:  # every setting (client part, stragglers' epochs, SCAFFOLD's
            # flags, cluster assignments) and tensor is meant for training clients
            raise ValueError(
                f"the root's round plan carries client settings or tensors "
                f"({sorted(plan.to_wire()) + sorted(plan.tensors)}), but in a hierarchy the "
                "root's clients are edge aggregators: give a strategy with a client part as "
                "edge_strategy, and stragglers are not simulated below a root"
            )
        if self._global is None or self._global.shape != global_params.shape:
            self._global = torch.empty_like(global_params)
        self._global.copy_(global_params)
        self._plan, self._round = plan, round
        self._runs = {}
        self._nodes = {}

    def collect(self) -> Iterator[ClientUpdate]:
        """Run each planned edge's rounds in turn, yielding its aggregate as it is ready."""
        if self.flat:
            yield from self.engine.collect()
            return
        assert self._global is not None, "distribute first"
        for eid in self._plan.clients:
            update = self._run_node(self.names[eid], self._global, self._round)
            update.client_id = eid
            yield update

    def node_metrics(self) -> dict[str, dict[str, float]]:
        """Per node below the root, the last global round's figures (see the class doc)."""
        return self._nodes

    # -- one node ----------------------------------------------------------------------------
    def _run_node(self, name: str, start: torch.Tensor, g: int) -> ClientUpdate:
        """Run ``name``'s edge rounds from ``start`` in global round ``g``; its aggregate."""
        engine = self.engine
        buf = self._buffers.get(name)
        if buf is None or buf.shape != start.shape:
            buf = self._buffers[name] = torch.empty_like(start)
        buf.copy_(start)
        strategy, children = self.strategies[name], self._children[name]
        available = list(self._clients[name]) if not children else list(range(len(children)))
        client_updates = link_bytes = bytes_down = bytes_up = 0
        clock, last = RoundTally(), _NodeTally()  # the node's whole run; its last edge round
        for _ in range(self.edge_rounds[name]):
            j = self._runs.get(name, 0)
            self._runs[name] = j + 1
            self.node_rounds[name] += 1
            t = self.node_rounds[name]
            plan = strategy.configure(t, available, sampling_rng(self.seed, "edge/" + name, g, j))
            stats = _NodeTally()
            if not children or name in self.served:
                engine.distribute(g + j * ROUND_STRIDE, plan, buf)
                stream: Iterable[ClientUpdate] = engine.collect()
            else:  # children start from a snapshot: the strategy may write buf as it goes
                snap = self._snapshots.get(name)
                if snap is None or snap.shape != buf.shape:
                    snap = self._snapshots[name] = torch.empty_like(buf)
                snap.copy_(buf)
                stream = self._child_updates(children, plan.clients, snap, g)
            strategy.aggregate(t, buf, stats.counted_below(stream, leaf=not children))
            client_updates += stats.client_updates
            link_bytes += stats.link_bytes
            bytes_down += len(plan.clients) * self._wire_bytes
            bytes_up += stats.received * self._wire_bytes
            last = stats
        seconds, loss = clock.seconds, last.train_loss
        node = self._nodes.setdefault(
            name,
            {"runs": 0, "rounds": 0, "client_updates": 0, "bytes_down": 0, "bytes_up": 0},
        )
        node["runs"] += 1
        node["rounds"] += self.edge_rounds[name]
        node["client_updates"] += client_updates
        node["bytes_down"] += bytes_down
        node["bytes_up"] += bytes_up
        node["loss"] = loss
        node["samples"] = self.population[name]
        node["seconds"] = node.get("seconds", 0.0) + seconds
        metrics = {
            "loss": loss,
            "client_updates": client_updates,
            "edge_rounds": self.edge_rounds[name],
            "trained_samples": last.samples,
            "link_bytes": link_bytes + bytes_down + bytes_up,
            "seconds": seconds,
        }
        return ClientUpdate(0, buf, self.population[name], metrics, g, extras={"node": name})

    def _child_updates(
        self, children: list[str], chosen: list[int], start: torch.Tensor, g: int
    ) -> Iterator[ClientUpdate]:
        for pid in chosen:
            update = self._run_node(children[pid], start, g)
            update.client_id = pid
            yield update

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Clients' personal state, and per node its strategy's state and round count.

        Node buffers are not saved: every global round starts them from the root's model.
        A flat topology's state is exactly :class:`InProcessClients`'s.
        """
        state = self.engine.state_dict()
        if not self.flat:
            state["nodes"] = {
                n: {"strategy": s.state_dict(), "rounds": self.node_rounds[n]}
                for n, s in self.strategies.items()
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nodes = state.get("nodes", {})
        if set(nodes) != set(self.strategies):
            raise CheckpointError(
                f"checkpoint holds nodes {sorted(nodes)}, this hierarchy below "
                f"{self.root!r} has {sorted(self.strategies)}: resume with the same topology"
            )
        self.engine.load_state_dict(state)
        for name, s in nodes.items():
            self.strategies[name].load_state_dict(s["strategy"])
            self.node_rounds[name] = int(s["rounds"])

    def __repr__(self) -> str:
        return (
            f"HierarchicalClients(root={self.root!r}, nodes={len(self._children)}, "
            f"flat={self.flat})"
        )


# -- helpers ---------------------------------------------------------------------------------
def _pick_root(topology: Topology, root: str | None) -> str:
    if root is not None:
        if root not in topology.nodes:
            raise ValueError(f"root {root!r} is not a node of the topology")
        return root
    roots = topology.roots()
    if len(roots) != 1:
        raise ValueError(
            f"the topology has {len(roots)} roots ({', '.join(map(repr, roots)) or 'a cycle?'}): "
            "pass root= to name the one the Federation runs at"
        )
    return roots[0]


def _tree(
    task: Task, topology: Topology, root: str
) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Child nodes and sorted client ids of every node under ``root``, parents first."""
    children: dict[str, list[str]] = {}
    clients: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    n = task.num_clients
    queue = [root]
    while queue:
        name = queue.pop(0)
        if name in children:
            raise ValueError(f"node {name!r} is reached twice under {root!r} (a cycle?)")
        node = topology.nodes.get(name)
        if node is None:
            raise ValueError(f"an edge names node {name!r}, which is not in the topology")
        parents = topology.parents(name)
        if name != root and len(parents) != 1:
            raise ValueError(
                f"node {name!r} has parents {parents}: a hierarchy is a tree, one parent each"
            )
        kids = topology.children(name)
        if not kids and not node.clients:
            raise ValueError(f"node {name!r} has no clients and no child nodes")
        if kids and node.clients:
            raise ValueError(
                f"node {name!r} has both clients and child nodes: attach its clients to a "
                "child node of their own"
            )
        for c in node.clients:
            if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 0 <= c < n:
                raise ValueError(
                    f"node {name!r}: client id {c!r} is out of range (the task has {n} "
                    f"clients, ids 0..{n - 1})"
                )
            if int(c) in owner:
                where = owner[int(c)]
                raise ValueError(
                    f"client {int(c)} is under node {where!r} and node {name!r}"
                    if where != name
                    else f"node {name!r} lists client {int(c)} twice"
                )
            owner[int(c)] = name
        children[name] = list(kids)
        clients[name] = sorted(int(c) for c in node.clients)
        queue.extend(kids)
    return children, clients


def _strategies(
    given: EdgeStrategy | Mapping[str, EdgeStrategy] | None, nodes: list[str], root: str
) -> dict[str, Strategy]:
    """One strategy object per non-root node (never shared: a parent's aggregation is in
    progress while its children aggregate, and each keeps its own state)."""

    def make(spec: EdgeStrategy | None, name: str) -> Strategy:
        if spec is None:
            s: Any = FedAvg(fraction=1.0)
        elif isinstance(spec, Strategy):
            s = spec
        else:
            s = spec(name)
        if not isinstance(s, Strategy):
            raise ValueError(f"node {name!r}: edge strategy must be a Strategy, got {s!r}")
        if s.prepares_model:
            raise ValueError(
                f"node {name!r}: {type(s).__name__} prepares the model and runs only at the root"
            )
        return s

    out: dict[str, Strategy] = {}
    if isinstance(given, Mapping):
        _check_names("edge_strategy", given, nodes, root)
        for name in nodes:
            out[name] = make(given.get(name), name)
        seen: dict[int, str] = {}
        for name, s in out.items():
            if id(s) in seen:
                raise ValueError(
                    f"nodes {seen[id(s)]!r} and {name!r} share one strategy object: give "
                    "each its own (or one Strategy for all, which is copied per node)"
                )
            seen[id(s)] = name
    elif isinstance(given, Strategy):
        for name in nodes:
            out[name] = make(copy.deepcopy(given), name)
    else:
        for name in nodes:
            out[name] = make(given, name)
    return out


def _edge_rounds(given: int | Mapping[str, int], nodes: list[str], root: str) -> dict[str, int]:
    if isinstance(given, Mapping):
        _check_names("edge_rounds", given, nodes, root)
        out = {name: given.get(name, 1) for name in nodes}
    else:
        out = dict.fromkeys(nodes, given)
    for name, r in out.items():
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"node {name!r}: edge_rounds must be an integer >= 1, got {r!r}")
    return out


def _check_names(what: str, given: Mapping[str, Any], nodes: list[str], root: str) -> None:
    for name in given:
        if name == root:
            raise ValueError(
                f"{what} names the root {root!r}: the root runs the Federation's strategy "
                "and rounds"
            )
        if name not in nodes:
            raise ValueError(f"{what} names node {name!r}, which is not below {root!r}")
