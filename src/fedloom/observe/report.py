"""The final report of a run: ``report.json`` for tools and ``report.md`` for people.

:func:`summarize` derives the summary from the per-round metrics records, so the report
agrees with ``metrics.jsonl``; :func:`write_report` writes whatever summary it is given.
Summary keys it knows: ``run_name``, ``rounds``, ``final_accuracy`` / ``final_accuracy_round``,
``best_accuracy`` / ``best_accuracy_round``, ``final_train_loss``, ``final_test_loss``,
``bytes_up``, ``bytes_down``, ``wall_time_s``, ``config`` (a dict); others are listed as-is.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_ROWS = (
    ("rounds", "Rounds"),
    ("final_accuracy", "Final accuracy"),
    ("best_accuracy", "Best accuracy"),
    ("final_train_loss", "Final train loss"),
    ("final_test_loss", "Final test loss"),
    ("bytes_up", "Bytes up"),
    ("bytes_down", "Bytes down"),
    ("wall_time_s", "Wall time"),
)
_HIDDEN = {"run_name", "config", "final_accuracy_round", "best_accuracy_round"}


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def summarize(
    records: Sequence[Mapping[str, Any]],
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    wall_time_s: float | None = None,
) -> dict[str, Any]:
    """Summary of per-round records; wall time defaults to the sum of their ``seconds``."""
    rounds = [r for r in records if _num(r.get("round"))]
    evals = [(r["round"], r["accuracy"]) for r in rounds if _num(r.get("accuracy"))]
    out: dict[str, Any] = {
        "run_name": run_name,
        "rounds": max((r["round"] for r in rounds), default=0),
    }
    if evals:
        out["final_accuracy_round"], out["final_accuracy"] = evals[-1]
        # max() keeps the first of equal accuracies: the earliest round that reached the best.
        out["best_accuracy_round"], out["best_accuracy"] = max(evals, key=lambda e: e[1])
    for key in ("train_loss", "test_loss"):
        vals = [r[key] for r in rounds if _num(r.get(key))]
        if vals:
            out[f"final_{key}"] = vals[-1]
    for key in ("bytes_up", "bytes_down"):
        out[key] = sum(int(r[key]) for r in rounds if _num(r.get(key)))
    secs = [r["seconds"] for r in rounds if _num(r.get("seconds"))]
    out["wall_time_s"] = wall_time_s if wall_time_s is not None else float(sum(secs))
    if config:
        out["config"] = dict(config)
    return out


def _bytes(n: float) -> str:
    """Human size plus the exact count, e.g. ``1.18 MiB (1,234,567 B)``."""
    if n < 1024:
        return f"{n:,.0f} B"
    v = n
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        v /= 1024
        if v < 1024 or unit == "TiB":
            break
    return f"{v:,.2f} {unit} ({int(n):,} B)"


def _cell(key: str, v: Any, summary: Mapping[str, Any]) -> str:
    if key in ("final_accuracy", "best_accuracy") and _num(v):
        rnd = summary.get(f"{key}_round")
        return f"{v:.4f}" + (f" (round {rnd})" if rnd is not None else "")
    if key in ("bytes_up", "bytes_down") and _num(v):
        return _bytes(float(v))
    if key == "wall_time_s" and _num(v):
        m, s = divmod(float(v), 60)
        return f"{int(m)}m {s:.1f}s" if m else f"{s:.1f}s"
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config as dotted keys, so it fits a two-column table."""
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


def write_report(run_dir: str | os.PathLike[str], summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``run_dir``; returns both paths."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    json_path, md_path = run / "report.json", run / "report.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(summary), indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)  # a reader never sees half a report

    known = {k for k, _ in _ROWS}
    rows = [
        (label, _cell(k, summary[k], summary)) for k, label in _ROWS if summary.get(k) is not None
    ]
    rows += [
        (k, _cell(k, v, summary))
        for k, v in summary.items()
        if k not in known and k not in _HIDDEN and v is not None
    ]
    lines = [
        f"# Run report: {summary.get('run_name') or run.name}",
        "",
        "| Metric | Value |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
    ]
    config = summary.get("config")
    if isinstance(config, Mapping) and config:
        lines += ["", "## Configuration", "", "| Key | Value |", "|---|---|"]
        lines += [f"| {k} | {_cell(k, v, {})} |" for k, v in _flatten(config)]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
