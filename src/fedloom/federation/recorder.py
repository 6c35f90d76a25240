"""The run directory: everything a run leaves behind, written by one loop callback.

runs/<name>/config.json       the resolved config
runs/<name>/metrics.jsonl     one record per round
runs/<name>/tb/               TensorBoard event files
runs/<name>/figures/*.png     accuracy, loss, a task's own metrics, partition (built-in task)
runs/<name>/checkpoint.pt     atomic and checksummed, after every round (resume); holds the
                              config too, so --resume can refuse a changed one (rundir.py)
runs/<name>/model.safetensors the final global model
runs/<name>/report.{json,md}  the final metric report
runs/<name>/wall_time.json    seconds the run took so far, summed over its resumes
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..observe import (
    MetricsLog,
    Notifier,
    Progress,
    TensorBoardLog,
    notify_all,
    plot_curves,
    summarize,
    write_report,
)
from ..update import ClientUpdate
from ..wire import encode
from .checkpoint import save_checkpoint
from .loop import Callback, Federation, RoundState, RunResult
from .rundir import RESULTS, check_run_dir

log = logging.getLogger("fedloom")

CHECKPOINT = "checkpoint.pt"
WALL_TIME = "wall_time.json"  # seconds spent in this run so far, summed over its resumes
_OWNED = (*RESULTS, WALL_TIME)  # what a fresh run (with overwrite) clears


class RunRecorder(Callback):
    """Writes the run directory, draws progress and sends notifications.

    Args:
        run_dir: the run's folder. A fresh run refuses to start while an earlier run's results
            are there (:class:`RunDirError`), unless ``overwrite`` clears them; a resumed run
            keeps them and continues.
        config: the resolved config, written as ``config.json``, into the report and into
            every checkpoint (as JSON text).
        resume: continue an interrupted run (the metrics file is cut back to the checkpoint).
        overwrite: replace an earlier run in ``run_dir``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        tensorboard: bool = True,
        figures: bool = True,
        checkpoint: bool = True,
        progress: bool | None = None,
        notifiers: Sequence[Notifier] = (),
        notify_on_finish: bool = True,
        notify_on_failure: bool = True,
        extra_report: dict[str, Any] | None = None,
    ):
        self.dir = Path(run_dir)
        self.config = config or {}
        self.resume, self.overwrite = resume, overwrite
        self.use_tb, self.figures = tensorboard, figures
        self.checkpoint, self.progress_flag = checkpoint, progress
        self.notifiers = list(notifiers)
        self.on_finish_flag, self.on_failure_flag = notify_on_finish, notify_on_failure
        self.extra_report = extra_report or {}
        self._t0 = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def on_start(self, fed: Federation) -> None:
        check_run_dir(self.dir, resume=self.resume, overwrite=self.overwrite)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            for name in _OWNED:
                (self.dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.dir / "tb", ignore_errors=True)
        (self.dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))
        self._before = self._earlier_wall_time() if self.resume else 0.0
        self.metrics = MetricsLog(self.dir / "metrics.jsonl")
        if self.resume:
            self.metrics.truncate_after(fed.round)
        self.tb = (
            TensorBoardLog(self.dir / "tb", purge_step=fed.round + 1 if self.resume else None)
            if self.use_tb
            else None
        )
        cohort = fed.strategy.cohort_size(len(fed.backend.available_clients(fed.round + 1)))
        self.progress = Progress(fed.rounds, cohort, enabled=self.progress_flag)
        if fed.round:
            self.progress.resume_at(fed.round)

    def on_state(self, fed: Federation, state: RoundState, round: int) -> None:
        if state is RoundState.DISTRIBUTE:
            self.progress.start_round(round, len(fed.plan.clients))

    def on_update(self, fed: Federation, update: ClientUpdate, error: str | None) -> None:
        self.progress.client_done()

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool:
        self.metrics.append(record)
        if self.tb is not None:
            self.tb.log(record, step=record["round"])
        self.progress.end_round(record)
        self._save_wall_time()
        if self.checkpoint:
            config = json.dumps(self.config, default=str)
            save_checkpoint(self.checkpoint_path, {**fed.state_dict(), "config": config})
        return False

    def on_finish(self, fed: Federation, result: RunResult) -> None:
        self._close()
        (self.dir / "model.safetensors").write_bytes(
            encode(fed.params, fed.spec, {"round": fed.round, "format": "fedloom"})
        )
        if self.figures:
            plot_curves(
                fed.history,
                self.dir / "figures",
                title=self.config.get("name"),
                metrics=list(fed.last_eval),  # a task's own metrics too, e.g. a regression's
            )
        summary = self._summary(fed, result)
        write_report(self.dir, summary)
        if self.on_finish_flag and self.notifiers:
            acc = result.final_metrics.get("accuracy")
            text = f"{fed.round} rounds, stop: {result.stop_reason}" + (
                f", accuracy {acc:.4f}" if acc is not None else ""
            )
            notify_all(self.notifiers, f"fedloom run {self.dir.name} finished", text, "finished")

    def on_error(self, fed: Federation, exc: BaseException) -> None:
        self._close()
        if hasattr(self, "_before"):  # started: the time so far counts when it resumes
            self._save_wall_time()
        if self.on_failure_flag and self.notifiers:
            if isinstance(exc, KeyboardInterrupt):  # the user stopped it: nothing is broken
                what, text = "interrupted", f"stopped in round {fed.round + 1}; --resume goes on"
            else:
                what, text = "failed", f"round {fed.round + 1}: {type(exc).__name__}: {exc}"
            notify_all(self.notifiers, f"fedloom run {self.dir.name} {what}", text, what)

    def _wall_time(self) -> float:
        """Seconds this run has taken: earlier sessions' (before a resume) plus this one's."""
        return getattr(self, "_before", 0.0) + time.perf_counter() - self._t0

    def _save_wall_time(self) -> None:
        (self.dir / WALL_TIME).write_text(json.dumps({"wall_time_s": self._wall_time()}))

    def _earlier_wall_time(self) -> float:
        """What the run's earlier sessions recorded; 0 for a run from before it was kept."""
        try:
            value = json.loads((self.dir / WALL_TIME).read_text())["wall_time_s"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0
        return float(value) if isinstance(value, (int, float)) and value >= 0 else 0.0

    def _close(self) -> None:
        for part in ("metrics", "tb", "progress"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()

    def _summary(self, fed: Federation, result: RunResult) -> dict[str, Any]:
        summary = summarize(
            fed.history,
            run_name=self.dir.name,
            config=self.config,
            wall_time_s=self._wall_time(),
        )
        summary.update(
            stop_reason=result.stop_reason,
            final_metrics=result.final_metrics,
            model=f"{len(fed.spec.entries)} tensors, {fed.spec.numel:,} parameters",
            **self.extra_report,
        )
        return summary
