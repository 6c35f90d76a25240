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

Reading the config and wiring the node is composition (this package); the relay's engine,
:class:`~fedloom.runtime.relay.EdgeLoop`, is runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..compose.engines import hierarchy
from ..compose.task import load_task
from ..config import load_config
from ..errors import ConfigError
from ..params import flatten_module
from ..runtime.client import RuntimeClient
from ..runtime.relay import EdgeLoop
from ..runtime.security import client_tls
from ..runtime.server import AggregatorServer
from ..topology import Topology
from .aggregator_log import relay_names
from .roles import check_tokens, server_options

log = logging.getLogger("fedloom.relay")


def run_node(source: Any, overrides: Sequence[str] = (), *, name: str) -> int:
    """Run the relay ``name`` of a config's ``[topology]`` until its parent says STOP."""
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
    # the node loop's clients (or child relays) train behind it, the server in the engine's place
    tree._engine = server  # type: ignore[assignment]  # duck-typed: it collects updates
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
        # this process's upward client is the relay itself, its server's ids 0.. its relays
        with relay_names("fedloom.client", {client_id: name}), relay_names(
            "fedloom.server", dict(enumerate(children))
        ):
            rounds = upward.run()
        server.finish()
        time.sleep(2.0)  # let polling clients hear STOP before the port closes
        log.info("relay %s done after %d rounds of its parent", name, rounds)
        return rounds
    finally:
        server.stop()
