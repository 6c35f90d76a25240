"""Training curves as PNG files from per-round metrics records.

Uses matplotlib's object API (``Figure`` + ``FigureCanvasAgg``) rather than ``pyplot``: no
global figure state and no GUI backend, so it is safe from worker threads and on headless
machines, and it does not change the backend of a user's own plots. matplotlib is imported
only when a plot is drawn, so importing fedloom stays fast.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(rounds, values) of records holding a finite number under ``key`` and a ``round``."""
    xs: list[float] = []
    ys: list[float] = []
    for r in records:
        x, y = r.get("round"), r.get(key)
        if (
            isinstance(x, numbers.Real)
            and isinstance(y, numbers.Real)
            and not isinstance(y, bool)
            and math.isfinite(y)
        ):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def _save(
    out: Path, title: str, ylabel: str, lines: list[tuple[str, list[float], list[float]]]
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, xs, ys in lines:
        # Markers, because evaluation may run only every few rounds.
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or lines[0][0] != ylabel:  # a lone "train loss" still needs naming
        ax.legend()
    fig.savefig(out, format="png")
    return out


def plot_curves(
    records: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    title: str | None = None,
    metrics: Sequence[str] = (),
) -> list[Path]:
    """Write ``accuracy.png`` and ``loss.png`` into ``out_dir``; returns the files written.

    A figure whose metrics appear in no record is skipped, not drawn empty, so a run
    without evaluation gets only ``loss.png``. ``title`` (e.g. the run name) prefixes titles.
    ``metrics``: other evaluation metrics (a task's own, e.g. ``mse``), one ``<name>.png``
    each, as a task that is no classifier reports no accuracy.
    """
    out = Path(out_dir)
    prefix = f"{title}: " if title else ""
    written: list[Path] = []
    acc = _series(records, "accuracy")
    if acc[0]:
        out.mkdir(parents=True, exist_ok=True)
        written.append(
            _save(out / "accuracy.png", f"{prefix}test accuracy", "accuracy", [("accuracy", *acc)])
        )
    losses = [
        (label, *_series(records, key))
        for label, key in (("train loss", "train_loss"), ("test loss", "test_loss"))
    ]
    losses = [line for line in losses if line[1]]
    if losses:
        out.mkdir(parents=True, exist_ok=True)
        written.append(_save(out / "loss.png", f"{prefix}loss", "loss", losses))
    for key in metrics:
        line = _series(records, key)
        if key in _DRAWN or not _FILE_SAFE.fullmatch(key) or not line[0]:
            continue
        out.mkdir(parents=True, exist_ok=True)
        written.append(_save(out / f"{key}.png", f"{prefix}{key}", key, [(key, *line)]))
    return written


_DRAWN = {"accuracy", "train_loss", "test_loss", "loss", "partition", "topology"}
_FILE_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a metric name as a file name
