"""Draw a topology to a PNG: roots at the top, each node centred over its children.

The layout is computed here (leaves take consecutive slots, a parent sits over the middle of
its children) rather than with networkx: a tree needs nothing more, and the picture is the
same on every machine. Rendered with the Agg canvas directly, like the partition figure, so it
works headless and never switches the backend of a user's interactive session.
"""

from __future__ import annotations

from pathlib import Path

from .graph import Topology

COLORS = {"root": "#f4a261", "aggregator": "#8ecae6", "leaf": "#e9edc9"}


def layout(topology: Topology) -> dict[str, tuple[float, float]]:
    """``name -> (x, y)``: y is minus the depth, x a leaf slot or the mean of the children."""
    topology.validate()
    pos: dict[str, tuple[float, float]] = {}
    next_slot = 0.0

    def place(name: str, depth: int) -> float:
        nonlocal next_slot
        kids = topology.children(name)
        if kids:
            xs = [place(k, depth + 1) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        else:
            x, next_slot = next_slot, next_slot + 1
        pos[name] = (x, -float(depth))
        return x

    for root in topology.roots():
        place(root, 0)
    return pos


def draw_topology(topology: Topology, path: str | Path, title: str | None = None) -> Path:
    """Draw nodes (name, address, attached client count) and child -> parent arrows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = layout(topology)
    width = max(pos[n][0] for n in pos) + 1
    height = 1 - min(pos[n][1] for n in pos)
    fig = Figure(figsize=(min(max(4.0, 1.9 * width), 48.0), 1.5 * height + 1), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    texts = {}
    for name, (x, y) in pos.items():
        node = topology.nodes[name]
        lines = [name]
        if node.address:
            lines.append(node.address)
        if node.clients:
            lines.append(f"{len(node.clients)} client{'s' * (len(node.clients) != 1)}")
        kind = "leaf" if not topology.is_aggregator(name) else "aggregator"
        if kind == "aggregator" and not topology.parents(name):
            kind = "root"
        box = {"boxstyle": "round,pad=0.4", "facecolor": COLORS[kind], "edgecolor": "#333333"}
        texts[name] = ax.text(
            x, y, "\n".join(lines), ha="center", va="center", fontsize=8, bbox=box
        )
    for child, parent in topology.edges:  # from the top of the child's label to the parent's foot
        ax.annotate(
            "",
            xy=(0.5, 0.0),
            xycoords=texts[parent],
            xytext=(0.5, 1.0),
            textcoords=texts[child],
            arrowprops={"arrowstyle": "-|>", "color": "#555555", "shrinkA": 5, "shrinkB": 5},
        )
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(1 - height - 0.6, 0.6)
    ax.axis("off")
    n_clients = sum(len(n.clients) for n in topology.nodes.values())
    plural = "s" * (n_clients != 1)
    ax.set_title(title or f"{len(topology.nodes)} nodes, {n_clients} simulated client{plural}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
