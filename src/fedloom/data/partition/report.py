"""What a split looks like: per-client sizes and label counts, as numbers, text and a chart.

Non-IID results are only interpretable next to the split that produced them, so
``fedloom partition`` prints :func:`format_report` and the run report keeps the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: Above this many classes the text table lists each client's top classes instead of one
#: column per class (62 FEMNIST columns do not fit a terminal).
MAX_CLASS_COLUMNS = 12


def partition_report(parts: Sequence[ArrayLike], labels: Any, num_classes: int) -> dict[str, Any]:
    """Count samples per client and per (client, class).

    Args:
        parts: one index array per client, as returned by a partitioner.
        labels: the labels the split was made from, ints in ``[0, num_classes)``.
        num_classes: number of label values (columns of the count matrix).

    Returns:
        A dict with ``num_clients``, ``num_classes``, ``num_samples`` (``len(labels)``),
        ``sizes`` (int64 array, one per client), ``counts`` (int64 ``clients x classes``
        matrix), ``classes_per_client`` (int64 array), ``label_tv`` (float array: each
        client's total-variation distance between its label distribution and that of all
        assigned samples) and ``summary``, a dict of plain Python numbers: ``num_assigned``,
        ``exact_cover``, ``min_size``, ``median_size``, ``max_size``, ``mean_size``,
        ``size_cv`` (std / mean of sizes: quantity skew, 0 when equal),
        ``mean_classes_per_client`` and ``mean_label_tv`` (label skew: 0 for IID, near 1
        when every client holds a single class of many). Arrays can be made JSON-ready
        with ``.tolist()``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    n = len(labels)
    arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
    k = len(arrays)
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise ValueError(f"sample ids must lie in [0, {n}), got [{flat.min()}, {flat.max()}]")

    owner = np.repeat(np.arange(k, dtype=np.int64), sizes)
    counts = np.bincount(
        owner * num_classes + labels[flat].astype(np.int64), minlength=k * num_classes
    ).reshape(k, num_classes)
    classes_per_client = (counts > 0).sum(axis=1)

    total = int(sizes.sum())
    global_dist = counts.sum(axis=0) / max(total, 1)
    client_dist = counts / np.maximum(sizes, 1)[:, None]
    label_tv = 0.5 * np.abs(client_dist - global_dist).sum(axis=1)
    exact_cover = total == n and bool((np.bincount(flat, minlength=n) == 1).all())

    mean_size = float(sizes.mean()) if k else 0.0
    summary = {
        "num_assigned": total,
        "exact_cover": exact_cover,
        "min_size": int(sizes.min()) if k else 0,
        "median_size": float(np.median(sizes)) if k else 0.0,
        "max_size": int(sizes.max()) if k else 0,
        "mean_size": mean_size,
        "size_cv": float(sizes.std() / mean_size) if mean_size > 0 else 0.0,
        "mean_classes_per_client": float(classes_per_client.mean()) if k else 0.0,
        "mean_label_tv": float(label_tv.mean()) if k else 0.0,
    }
    return {
        "num_clients": k,
        "num_classes": num_classes,
        "num_samples": n,
        "sizes": sizes,
        "counts": counts,
        "classes_per_client": classes_per_client,
        "label_tv": label_tv,
        "summary": summary,
    }


def _top_classes(row: np.ndarray, top: int = 3) -> str:
    order = np.argsort(-row, kind="stable")[:top]
    return " ".join(f"{c}:{row[c]}" for c in order if row[c] > 0)


def format_report(report: dict[str, Any], max_rows: int = 20) -> str:
    """Render :func:`partition_report` output as a fixed-width text table.

    Shows the first ``max_rows`` clients (size, number of classes, then one column per class,
    or each client's top three classes when there are more than ``MAX_CLASS_COLUMNS``), a
    totals row and the summary statistics.
    """
    sizes, counts = report["sizes"], report["counts"]
    k, c, s = report["num_clients"], report["num_classes"], report["summary"]
    per_class = c <= MAX_CLASS_COLUMNS
    totals = counts.sum(axis=0)

    width = max(5, len(str(int(s["max_size"]))), len(str(int(s["num_assigned"]))))
    cw = max(4, len(str(int(totals.max()))) if totals.size else 1, len(str(c - 1)))
    header = f"{'client':>7} {'size':>{width}} {'classes':>7}"
    header += "".join(f" {j:>{cw}}" for j in range(c)) if per_class else "  top classes"

    cover = "exact cover" if s["exact_cover"] else "NOT an exact cover"
    lines = [
        f"Partition: {k} clients, {report['num_samples']} samples "
        f"({s['num_assigned']} assigned, {cover}), {c} classes",
        header,
        "-" * len(header),
    ]
    shown = min(k, max(max_rows, 0))
    for i in range(shown):
        row = f"{i:>7} {sizes[i]:>{width}} {report['classes_per_client'][i]:>7}"
        if per_class:
            row += "".join(f" {v:>{cw}}" for v in counts[i])
        else:
            row += "  " + _top_classes(counts[i])
        lines.append(row)
    if k > shown:
        lines.append(f"{'...':>7} ({k - shown} more clients)")
    lines.append("-" * len(header))
    total_row = f"{'total':>7} {s['num_assigned']:>{width}} {int((totals > 0).sum()):>7}"
    if per_class:
        total_row += "".join(f" {v:>{cw}}" for v in totals)
    lines.append(total_row)
    lines.append(
        f"size min/median/max {s['min_size']}/{s['median_size']:g}/{s['max_size']}, "
        f"mean {s['mean_size']:.1f}, CV {s['size_cv']:.3f}"
    )
    lines.append(
        f"classes per client (mean) {s['mean_classes_per_client']:.2f}, "
        f"label skew (mean TV distance to global) {s['mean_label_tv']:.3f}"
    )
    return "\n".join(lines)


def plot_partition(report: dict[str, Any], path: str | Path, max_clients: int = 50) -> Path:
    """Draw a stacked horizontal bar per client (segments = class counts) to a PNG.

    With more than ``max_clients`` clients only the first ``max_clients`` are drawn (the title
    says so). The figure is rendered with the Agg canvas directly instead of through
    ``pyplot``, so it works headless and never switches the backend of a user's interactive
    session; matplotlib is imported here so that importing fedloom stays light.
    """
    fig = partition_figure(report, max_clients)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def partition_figure(report: dict[str, Any], max_clients: int = 50) -> Any:
    """The matplotlib ``Figure`` :func:`plot_partition` saves. Its colour key is a legend for
    up to 20 classes and a colour bar beyond (FEMNIST's 62), so every colour is named."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    counts = report["counts"]
    k, c = report["num_clients"], report["num_classes"]
    shown = max(1, min(k, max_clients))
    sub = counts[:shown]

    fig = Figure(figsize=(9, max(3.0, 0.22 * shown + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = colormaps["tab10" if c <= 10 else "tab20" if c <= 20 else "viridis"]
    colors = [palette(j if c <= 20 else j / max(c - 1, 1)) for j in range(c)]
    y = np.arange(len(sub))
    left = np.zeros(len(sub))
    for j in range(c):
        if sub.size and sub[:, j].any():
            ax.barh(y, sub[:, j], left=left, color=colors[j], label=str(j), height=0.8)
        left += sub[:, j]
    ax.set_yticks(y, [str(i) for i in y] if shown <= 60 else [""] * len(y))
    ax.set_ylim(len(sub) - 0.5, -0.5)  # client 0 on top, no empty margin
    ax.set_xlabel("samples")
    ax.set_ylabel("client")
    title = f"{k} clients, {c} classes"
    if k > shown:
        title += f" (first {shown} shown)"
    ax.set_title(title)
    if c <= 20:
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    else:  # too many for a legend: a colour bar from class 0 to class c - 1
        key = ScalarMappable(Normalize(0, c - 1), palette)
        fig.colorbar(key, ax=ax, label="class", pad=0.02)
    fig.tight_layout()
    return fig
