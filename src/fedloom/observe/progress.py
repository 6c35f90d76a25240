"""Terminal progress: a rounds bar with ETA and a clients bar for the current round.

Off by default when stderr is not a TTY, so CI logs and pipes get no control codes at all.
``client_done`` is called once per client, so it only bumps a counter; rich's own refresh
thread redraws a few times a second instead of once per call.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class Progress:
    """Two-bar progress display; every method is a no-op when disabled.

    ``enabled=None`` enables it only when stderr is a TTY. ``console`` (a ``rich`` Console)
    redirects output, e.g. to a ``StringIO`` in tests; by default it draws on stderr.
    """

    def __init__(
        self,
        total_rounds: int,
        clients_per_round: int,
        enabled: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.total_rounds = total_rounds
        self.clients_per_round = clients_per_round
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._acc: float | None = None
        self._loss: float | None = None
        self._started = self._closed = False
        if not self.enabled:
            return
        # rich is imported only when drawing, so a quiet run does not pay for it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            refresh_per_second=4,
            speed_estimate_period=3600.0,  # rounds can take minutes; keep them in the ETA
        )
        self._rounds = self._bar.add_task("rounds", total=total_rounds)
        self._clients = self._bar.add_task("clients", total=clients_per_round)

    def _start(self) -> None:
        if self.enabled and not self._started and not self._closed:
            self._bar.start()
            self._started = True

    def resume_at(self, round: int) -> None:
        """Show ``round`` rounds as done; the ETA then uses only rounds run from here on."""
        if self.enabled:
            self._start()
            self._bar.reset(self._rounds, total=self.total_rounds, completed=round)

    def start_round(self, round: int, n_clients: int | None = None) -> None:
        """Reset the clients bar for ``round`` with ``n_clients`` (default clients_per_round)."""
        if self.enabled:
            self._start()
            n = self.clients_per_round if n_clients is None else n_clients
            self._bar.reset(self._clients, total=n, description=f"round {round} clients")

    def client_done(self) -> None:
        """One client of the current round finished; cheap, no redraw."""
        if self.enabled:
            self._bar.advance(self._clients)

    def end_round(self, metrics: Mapping[str, Any]) -> None:
        """Count the round and show the latest accuracy and train loss seen so far."""
        if not self.enabled:
            return
        self._start()
        acc, loss = metrics.get("accuracy"), metrics.get("train_loss", metrics.get("test_loss"))
        if isinstance(acc, int | float) and not isinstance(acc, bool):
            self._acc = float(acc)
        if isinstance(loss, int | float) and not isinstance(loss, bool):
            self._loss = float(loss)
        parts = ["rounds"]
        if self._acc is not None:
            parts.append(f"acc {self._acc:.4f}")
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        done = metrics.get("round")
        kwargs: dict[str, Any] = {"completed": done} if isinstance(done, int) else {"advance": 1}
        self._bar.update(self._rounds, description=" · ".join(parts), **kwargs)

    def close(self) -> None:
        """Hide the clients bar, draw the final state and stop the refresh thread."""
        if self.enabled and self._started and not self._closed:
            self._bar.update(self._clients, visible=False)
            self._bar.stop()
        self._closed = True

    def __enter__(self) -> Progress:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
