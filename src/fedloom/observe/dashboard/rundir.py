"""A run directory as a dashboard shows it, read-only: ``fedloom dashboard runs/NAME``.

``config.json`` gives the summary and topology, ``metrics.jsonl`` the round records and
``report.json``/``report.md`` the final report. A run still being written (no report yet, as
when another process trains it) is followed: :class:`RunDirFollower` reads new records once a
second, from where it stopped, until the report appears.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..metrics import METRICS_FILE, read_metrics
from .state import LiveState
from .summary import run_info

CONFIG_HEADING = "## Configuration"  # report.md's config table, left out like report.json's


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """``report.json`` with ``report.md``'s text as ``markdown``, both without their config
    (it may hold tokens; the page shows :func:`~.summary.config_summary` instead); None
    before the run ends."""
    try:
        report: dict[str, Any] = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    report.pop("config", None)
    with contextlib.suppress(OSError):  # the JSON alone is the report too
        text = (run_dir / "report.md").read_text()
        report["markdown"] = text.split(f"\n{CONFIG_HEADING}", 1)[0].rstrip() + "\n"
    return report


def load_run_dir(run_dir: str | Path) -> LiveState:
    """The state of the run in ``run_dir`` (ConfigError when it holds no run)."""
    directory = Path(run_dir)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory} is not a run directory (no readable config.json)") from e
    rounds = config.get("rounds")
    state = LiveState(
        run_info(
            config,
            name=str(config.get("name") or directory.name),
            rounds=rounds if isinstance(rounds, int) else None,
            mode="replay",
        )
    )
    state.started(0)
    for record in read_metrics(directory / METRICS_FILE):
        state.record(record)
    if (report := read_report(directory)) is not None:
        state.finish(report)
    return state


class RunDirFollower:
    """Feeds ``state`` the records a run appends to ``run_dir`` until its report is written."""

    def __init__(self, state: LiveState, run_dir: str | Path, every: float = 1.0) -> None:
        self.state, self.dir, self.every = state, Path(run_dir), every
        self._seen = len(read_metrics(self.dir / METRICS_FILE))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedloom-follow", daemon=True)

    def start(self) -> RunDirFollower:
        if read_report(self.dir) is None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> bool:
        """Read what is new; True once the report is there (nothing more will come)."""
        records = read_metrics(self.dir / METRICS_FILE)
        for record in records[self._seen :]:
            self.state.record(record)
        self._seen = max(self._seen, len(records))
        report = read_report(self.dir)
        if report is not None:
            self.state.finish(report)
        return report is not None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.poll():
                return
