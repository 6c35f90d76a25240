"""What a dashboard says about a run that does not change: its name, a config summary (never
a secret), its round count and its topology graph.

The summary is a whitelist of the sections that say what is trained and how; tokens, keys,
URLs and proxies are left out by name, as the page may be read by others than the operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...topology import Topology, TopologyError

SECTIONS = ("data", "model", "train", "strategy", "simulation", "privacy", "compression",
            "runtime", "task", "attack")  # fmt: skip
TOP = ("name", "rounds", "seed")
SECRET = ("token", "key", "cert", "ca", "secret", "password", "proxy", "url", "root", "dir")
RUNTIME = ("address", "min_clients", "quorum", "round_timeout", "heartbeat_timeout")


def _secret(key: str) -> bool:
    parts = key.lower().split("_")
    return any(word in parts for word in SECRET) or "token" in key.lower()


def config_summary(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for the scalar keys that say what the run trains and how."""
    out: list[tuple[str, Any]] = [(k, config[k]) for k in TOP if config.get(k) is not None]
    for section in SECTIONS:
        values = config.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if section == "runtime" and key not in RUNTIME:
                continue
            if _secret(key) or value is None or isinstance(value, Mapping | list | tuple):
                continue
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
        "config": config_summary(config),
        "rounds": rounds,
        "topology": topology_graph(config.get("topology")),
        "relays": list(relays),
        "mode": mode,
        "deployment": deployment,
    }
