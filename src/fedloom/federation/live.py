"""The round loop's feed of a live dashboard: a callback that publishes, never waits.

Each hook hands :class:`~fedloom.observe.dashboard.LiveState` (and, in a deployment, the
:class:`~fedloom.observe.dashboard.ClientTable`) a few numbers under their short locks; the
pages' threads do the JSON and the sending. Put it after the run directory's recorder, so the
report it reads at the end is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..observe.dashboard import ClientTable, LiveState, read_report
from ..update import ClientUpdate
from .loop import Callback, Federation, RoundState, RunResult


class LiveFeed(Callback):
    """Publishes the loop's state, round records, clients and final report to ``state``.

    Args:
        state: what the dashboard shows.
        run_dir: where the recorder writes ``report.json``/``report.md`` (None: the report
            is made from the result alone).
    """

    def __init__(self, state: LiveState, run_dir: Path | None = None) -> None:
        self.state, self.run_dir = state, run_dir
        self.clients: ClientTable | None = state.clients

    def on_start(self, fed: Federation) -> None:
        self.state.started(fed.round)

    def on_state(self, fed: Federation, state: RoundState, round: int) -> None:
        self.state.state(state.value, round)
        if state is RoundState.DISTRIBUTE:
            self.state.planned(len(fed.plan.clients))
            if self.clients is not None:
                self.clients.planned(fed.plan.clients)

    def on_update(self, fed: Federation, update: ClientUpdate, error: str | None) -> None:
        self.state.client_done()
        if self.clients is not None:
            size = fed.upload_size(update) if error is None else 0
            self.clients.reported(update.client_id, size, error is not None)

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> None:
        self.state.record(record)
        if self.clients is not None:
            self.clients.round_closed()

    def on_finish(self, fed: Federation, result: RunResult) -> None:
        report = read_report(self.run_dir) if self.run_dir is not None else None
        if report is None:
            report = {
                "rounds": result.rounds,
                "stop_reason": result.stop_reason,
                "final_metrics": result.final_metrics,
            }
        self.state.finish(report)

    def on_error(self, fed: Federation, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt)
        text = None if interrupted else f"round {fed.round + 1}: {type(exc).__name__}: {exc}"
        self.state.finish(None, "interrupted" if interrupted else "failed", text)
