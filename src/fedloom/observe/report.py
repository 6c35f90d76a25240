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

_LABELS = {
    "rounds": "Rounds",
    "final_accuracy": "Final accuracy",
    "best_accuracy": "Best accuracy",
    "final_train_loss": "Final train loss",
    "final_test_loss": "Final test loss",
    "bytes_up": "Bytes up",
    "bytes_down": "Bytes down",
    "wall_time_s": "Wall time",
}
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
        # max() keeps the first of equal accuracies: the earliest round that reached the best.
        best = max(evals, key=lambda e: e[1])
        out.update(
            final_accuracy=evals[-1][1],
            final_accuracy_round=evals[-1][0],
            best_accuracy=best[1],
            best_accuracy_round=best[0],
        )
    for key in ("train_loss", "test_loss"):
        vals = [r[key] for r in rounds if _num(r.get(key))]
        if vals:
            out[f"final_{key}"] = vals[-1]
    for key in ("bytes_up", "bytes_down"):
        if any(_num(r.get(key)) for r in rounds):  # absent means not measured, not zero
            out[key] = sum(int(r[key]) for r in rounds if _num(r.get(key)))
    secs = [r["seconds"] for r in rounds if _num(r.get("seconds"))]
    out["wall_time_s"] = wall_time_s if wall_time_s is not None else float(sum(secs))
    if config:
        out["config"] = dict(config)
    return out


def _bytes(n: float) -> str:
    """Human size plus the exact count, e.g. ``1.18 MiB (1,234,567 B)``."""
    exp = min(4, max(0, (int(n).bit_length() - 1) // 10))
    return f"{n:,.0f} B" if exp == 0 else f"{n / 1024**exp:,.2f} {' KMGT'[exp]}iB ({int(n):,} B)"


def _cell(key: str, v: Any, summary: Mapping[str, Any]) -> str:
    """One value as shown in report.md: accuracies with their round, sizes, durations."""
    if not _num(v):
        return _escape(_text(v))
    if key in ("final_accuracy", "best_accuracy"):
        rnd = summary.get(f"{key}_round")
        return f"{v:.4f}" + (f" (round {rnd})" if rnd is not None else "")
    if key in ("bytes_up", "bytes_down"):
        return _bytes(float(v))
    if key == "wall_time_s":
        m, s = divmod(float(v), 60)
        return f"{int(m)}m {s:.1f}s" if m else f"{s:.1f}s"
    return f"{v:.4f}" if key.startswith("final_") else f"{v:.6g}"


def _escape(text: str) -> str:
    """Keep a value inside its Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested tables (and tables in lists, as ``nodes.0.name``) as dotted keys, so they fit
    a two-column table instead of showing as a Python repr."""
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            items += _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)) and any(isinstance(x, Mapping) for x in v):
            items += _flatten({str(i): x for i, x in enumerate(v)}, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


def _text(v: Any) -> str:
    """A leaf value as a person writes it: lists comma-separated, nothing as a dash."""
    if v is None or (isinstance(v, (Mapping, list, tuple)) and not v):
        return "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(_text(x) for x in v)
    return f"{v:.6g}" if _num(v) and not isinstance(v, int) else str(v)


def _table(title: str, d: Mapping[str, Any]) -> list[str]:
    """A ``## title`` section holding ``d`` as a Key | Value table."""
    rows = [f"| {_escape(k)} | {_escape(_text(v))} |" for k, v in _flatten(d)]
    return ["", f"## {title}", "", "| Key | Value |", "|---|---|", *rows]


def write_report(run_dir: str | os.PathLike[str], summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``run_dir``; returns both paths."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    json_path, md_path = run / "report.json", run / "report.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(summary), indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)  # a reader never sees half a report

    rows = [(label, k) for k, label in _LABELS.items()]
    rows += [(_escape(k), k) for k in summary if k not in _LABELS and k not in _HIDDEN]
    tables = [(k, v) for k, v in summary.items() if k not in _HIDDEN and isinstance(v, Mapping)]
    cells = [
        (label, _cell(k, summary[k], summary))
        for label, k in rows
        if summary.get(k) is not None and not isinstance(summary[k], Mapping)
    ]
    lines = [
        f"# Run report: {summary.get('run_name') or run.name}",
        "",
        "| Metric | Value |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in cells),
    ]
    for key, table in tables:  # e.g. final_metrics: a table of its own, not a dict repr
        lines += _table(_LABELS.get(key, key.replace("_", " ").capitalize()), table)
    config = summary.get("config")
    if isinstance(config, Mapping) and config:
        lines += _table("Configuration", config)
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
