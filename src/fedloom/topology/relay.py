"""A relay: a node that aggregates its own clients and is itself a client of its parent.

    fedloom node CONFIG --name edge0

serves the clients attached to ``edge0`` at its address (an :class:`AggregatorServer` with
check-in, heartbeats, tokens and TLS as any aggregator; ``runtime.tokens`` holds the clients'
tokens by id and the relays' tokens by node name) and dials its parent as a
:class:`RuntimeClient` whose "training" is the edge's own rounds: for each model the parent
hands it, it runs ``edge_rounds`` rounds of ``edge_strategy`` over its clients and uploads
the aggregate, weighted by its clients' samples. It reuses the hierarchical simulation's own
node loop (:meth:`HierarchicalClients._run_node`) with the server in place of the in-process
engine, so sampling, client seeds and aggregation are those of the simulation and a network
run gives the simulation's parameters bit for bit. A relay may also serve relays (any depth):
its child relays get its rounds numbered ``g + j * ROUND_STRIDE`` and keep the root's ``g``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..algorithms.base import RoundPlan
from ..errors import ConfigError
from ..params import flatten_module
from ..update import ClientUpdate
from .graph import Topology
from .hierarchy import ROUND_STRIDE

log = logging.getLogger("fedloom.relay")


class EdgeLoop:
    """The engine a relay's :class:`RuntimeClient` trains with: one call, the edge's rounds."""

    def __init__(self, hierarchy: Any, name: str, client_id: int):
        self.hierarchy, self.name, self.client_id = hierarchy, name, client_id
        self.seed = hierarchy.seed
        self.spec = hierarchy.engine.spec
        self._round, self._params = -1, None

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


def run_node(source: Any, overrides: list[str] = (), *, name: str) -> int:
    """Run the relay ``name`` of a config's ``[topology]`` until its parent says STOP."""
    from ..config import load_config
    from ..experiment import hierarchy, load_task
    from ..runtime.client import RuntimeClient
    from ..runtime.roles import check_tokens, client_tls, server_options
    from ..runtime.server import AggregatorServer

    cfg = load_config(source, list(overrides))
    if cfg.topology is None:
        raise ConfigError("fedloom node: the config has no [topology] section")
    topology = Topology.from_config(cfg.topology)
    topology.validate(network=True)
    if name not in topology.nodes:
        raise ConfigError(f"fedloom node: no node {name!r}; nodes: {sorted(topology.nodes)}")
    parents, node = topology.parents(name), topology.nodes[name]
    if not parents:
        raise ConfigError(f"fedloom node: {name!r} is the root; run it with fedloom server")
    parent = topology.nodes[parents[0]]
    task = load_task(cfg)
    tree = hierarchy(cfg, task)(None)
    rt = cfg.runtime
    spec, _ = flatten_module(task.build_model(), task.personal_layers)
    check_tokens(cfg, task.num_clients)
    children = topology.children(name)  # child relays are ids 0.., else its clients' own
    ids = range(len(children)) if children else node.clients
    keys = children or [str(c) for c in node.clients]
    server = AggregatorServer(
        spec,
        seed=cfg.seed,
        address=node.address or "127.0.0.1:0",
        clients=ids,
        min_clients=len(keys),
        tokens={i: rt.tokens[k] for i, k in zip(ids, keys)} if rt.tokens else None,
        **server_options(rt),
    ).start()
    tree._engine = server  # the node loop's clients (or child relays) train behind it
    tree.served.add(name)
    tree._wire_bytes = spec.nbytes
    log.info("relay %s serves its group at %s", name, server.address)
    server.available_clients(0)  # wait for the check-ins before taking work from the parent
    client_id = topology.children(parent.name).index(name)
    upward = RuntimeClient(
        task,
        parent.address or rt.address,
        client_id,
        token=rt.tokens.get(name, ""),  # a relay's token is keyed by its name
        task_id=rt.task_id,
        tls=client_tls(rt),
        retry_for=rt.retry_for,
        use_bulk=rt.bulk,
        engine=EdgeLoop(tree, name, client_id),
        num_samples=tree.population[name],
    )
    try:
        rounds = upward.run()
        server.finish()
        time.sleep(2.0)  # let polling clients hear STOP before the port closes
        log.info("relay %s done after %d rounds of its parent", name, rounds)
        return rounds
    finally:
        server.stop()
