"""Per-round metrics as JSON lines: one object per round in ``metrics.jsonl``.

JSON lines are append-only, so a crash mid-run loses at most the line being written, and
the file is readable by ``pandas.read_json(lines=True)``, ``jq`` or :func:`read_metrics`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

METRICS_FILE = "metrics.jsonl"


def _resolve(path: str | os.PathLike[str]) -> Path:
    """A directory (existing, or a path without suffix) means ``<dir>/metrics.jsonl``."""
    p = Path(path)
    return p / METRICS_FILE if p.is_dir() or not p.suffix else p


def _default(value: Any) -> Any:
    """Turn numpy/torch scalars into plain numbers; anything else becomes its ``str``."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics file, in order; ``[]`` if it does not exist.

    A torn final line (the process was killed mid-write) is ignored rather than raised,
    because it is exactly the round a resumed run will write again.
    """
    file = _resolve(path)
    if not file.exists():
        return []
    lines = file.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{file}:{i + 1}: not a JSON object: {line[:80]!r}") from None
    return records


class MetricsLog:
    """Append-only writer of ``metrics.jsonl``; each record is flushed as soon as written.

    ``path`` is the file or the run directory that holds it. Usable as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _resolve(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def _handle(self) -> IO[str]:
        if self._file is None or self._file.closed:
            self._drop_torn_tail()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return self._file

    def _drop_torn_tail(self) -> None:
        """Cut a partial last line left by a killed writer, so new lines do not glue onto it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a single line and flush it, so a crash loses nothing written."""
        line = json.dumps(dict(record), default=_default, separators=(",", ":"))
        with self._lock:
            f = self._handle()
            f.write(line + "\n")
            f.flush()

    def truncate_after(self, round: int) -> int:
        """Keep only records with ``round <= round``; returns how many were kept.

        Used on resume from a checkpoint of ``round``: rounds logged after that checkpoint will
        be run again, and dropping them makes the file equal an uninterrupted run's. Records
        without a ``round`` are dropped too. The rewrite is atomic (temp file + rename).
        """
        with self._lock:
            self.close()
            kept = [
                r
                for r in read_metrics(self.path)
                if isinstance(r.get("round"), int | float) and r["round"] <= round
            ]
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for r in kept:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return len(kept)

    def read(self) -> list[dict[str, Any]]:
        """All records written so far (see :func:`read_metrics`)."""
        return read_metrics(self.path)

    def close(self) -> None:
        """Close the file; a later :meth:`append` reopens it."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._file = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
