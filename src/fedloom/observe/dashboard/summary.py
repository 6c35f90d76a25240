"""What a dashboard says about a run that does not change: its name, a config summary (never
a secret), its round count and its topology graph.

The summary is a whitelist of the keys that say what is trained and how (and the privacy and
compression sections); tokens, keys, URLs and paths are left out by name there too, as the
page may be read by others than the operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...topology import Topology, TopologyError

# what a reader wants to see of a run, in this order; a key the config lacks is left out
KEYS = ("name", "rounds", "seed", "task.factory", "data.dataset", "data.num_clients",
        "data.partition", "model.name", "train.local_epochs", "train.batch_size", "train.lr",
        "train.optimizer", "train.device", "strategy.name", "strategy.clients_per_round",
        "strategy.fraction", "simulation.engine", "runtime.address", "runtime.min_clients",
        "runtime.quorum", "topology.edge_rounds", "attack.kind", "attack.fraction")  # fmt: skip
# sections shown whole (their scalar keys) when the run has them
WHOLE = ("privacy", "compression")
SECRET = ("token", "key", "cert", "ca", "secret", "password", "proxy", "url", "root", "dir")


def _secret(key: str) -> bool:
    parts = key.lower().split("_")
    return any(word in parts for word in SECRET) or "token" in key.lower()


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def config_summary(config: Mapping[str, Any], deployment: bool = False) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for the keys that say what the run trains and how: the
    :data:`KEYS` it sets, the Dirichlet alpha of a Dirichlet split, and the scalar keys of
    its ``[privacy]`` and ``[compression]`` (never a token, key, URL or path); the
    ``[runtime]`` keys only of a ``deployment``, the attack's only when there is one."""
    out: list[tuple[str, Any]] = []
    for key in KEYS:
        if key.startswith("runtime.") and not deployment:
            continue
        if key.startswith("attack.") and _get(config, "attack.kind") is None:
            continue
        value = _get(config, key)
        if value is not None and not isinstance(value, Mapping | list):
            out.append((key, value))
        if key == "data.partition" and value == "dirichlet":
            out.append(("data.alpha", _get(config, "data.alpha")))
    for section in WHOLE:
        values = config.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if _secret(key) or value is None or isinstance(value, Mapping):
                continue
            if isinstance(value, list | tuple):
                if not value:
                    continue
                value = ", ".join(map(str, value))
            out.append((f"{section}.{key}", value))
    return out


def topology_graph(section: Any) -> dict[str, Any] | None:
    """Nodes (name, address, simulated clients) and ``[child, parent]`` edges, or None."""
    if section is None:
        return None
    try:
        topo = Topology.from_config(section).validate()
    except (TopologyError, ValueError, TypeError):
        return None
    nodes = [
        {"name": n.name, "address": n.address, "clients": len(n.clients)}
        for n in topo.nodes.values()
    ]
    return {"nodes": nodes, "edges": [list(e) for e in topo.edges]}


def run_info(
    config: Mapping[str, Any],
    *,
    name: str,
    rounds: int | None,
    mode: str = "live",
    deployment: bool = False,
    relays: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``run`` part of :class:`~.state.LiveState`."""
    return {
        "name": name,
        "config": config_summary(config, deployment),
        "rounds": rounds,
        "topology": topology_graph(config.get("topology")),
        "relays": list(relays),
        "mode": mode,
        "deployment": deployment,
    }
