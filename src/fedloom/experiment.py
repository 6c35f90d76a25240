"""From a config to a finished run: each section builds its part (:mod:`fedloom.compose`), and
:class:`Experiment` holds them.

    import fedloom
    result = fedloom.run("examples/mnist_dirichlet.toml", overrides=["rounds=5"])

is all the CLI's ``fedloom run`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .compose.attack import attack_task, attacked
from .compose.data import load_dataset, partition
from .compose.engines import EngineBuilder, build_engine, hierarchy
from .compose.factory import custom_task, import_factory
from .compose.loop import build_federation
from .compose.privacy import with_privacy
from .compose.record import build_recorder, notifiers, open_run_dir, restore
from .compose.strategy import build_strategy
from .compose.task import build_task, determinism, load_task, task_parts
from .config import Config, load_config
from .data.base import TensorDataset
from .federation import Callback, Federation, RunResult
from .federation.recorder import RunRecorder
from .task import Task

__all__ = [  # the builders, published here before they moved to fedloom.compose
    "Experiment",
    "build_strategy",
    "build_task",
    "custom_task",
    "hierarchy",
    "import_factory",
    "load_dataset",
    "load_task",
    "notifiers",
    "partition",
    "run",
]


@dataclass
class Experiment:
    """A configured run, built but not started; ``run()`` starts (or resumes) it."""

    config: Config
    dataset: TensorDataset | None  # the built-in task's data; None for a [task] of your own
    parts: list[np.ndarray] | None
    task: Task
    federation: Federation
    recorder: RunRecorder | None  # None on torchrun ranks other than 0 (rank 0 records)

    @classmethod
    def from_config(
        cls,
        source: Any = None,
        overrides: Sequence[str] = (),
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool | None = None,
        backend: EngineBuilder | None = None,
    ) -> Experiment:
        """Build the run a config describes, each section its part, the run directory
        checked first. ``backend(cfg, task)``, when given, replaces the simulation engine
        (e.g. :func:`fedloom.deploy.roles.aggregator`, the gRPC aggregator)."""
        cfg = load_config(source, list(overrides))
        with determinism(cfg):  # cuBLAS reads its workspace setting when it first runs
            return cls._build(cfg, resume, overwrite, progress, backend)

    @classmethod
    def _build(
        cls,
        cfg: Config,
        resume: bool,
        overwrite: bool,
        progress: bool | None,
        backend: EngineBuilder | None,
    ) -> Experiment:
        saved = open_run_dir(cfg, resume=resume, overwrite=overwrite)
        net = backend is not None
        parts = task_parts(cfg)
        attackers = attack_task(cfg, parts, networked=net)
        task = parts.task
        strategy = with_privacy(cfg, build_strategy(cfg), task.num_clients, networked=net)
        engine = attacked(cfg, build_engine(cfg, task, backend), attackers)
        report = {"task": task.describe(), **parts.report}
        rec = build_recorder(
            cfg, report, resume=resume, overwrite=overwrite, progress=progress, networked=net
        )
        callbacks: list[Callback] = [rec] if rec is not None else []
        fed = build_federation(cfg, task, strategy, engine, callbacks, networked=net)
        return cls(cfg, parts.dataset, parts.parts, task, restore(cfg, fed, saved), rec)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output.dir) / self.config.name

    def write_partition_figure(self) -> Path | None:
        """``figures/partition.png``: the built-in task's split; None for a task of your own."""
        if self.dataset is None or self.parts is None:
            return None
        from .data.partition import partition_report, plot_partition

        report = partition_report(
            self.parts, self.dataset.train_y.numpy(), self.dataset.num_classes
        )
        path = self.run_dir / "figures" / "partition.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_partition(report, path)
        return path

    def run(self) -> RunResult:
        """Run the federation; the partition figure is drawn after it (also when it fails),
        as matplotlib's ~1.3 s of import and drawing is no reason to delay the first client.
        A backend with worker processes is closed at the end."""
        try:
            with determinism(self.config):
                return self.federation.run()
        finally:
            self.federation.backend.close()
            if self.config.output.figures and self.recorder is not None:
                self.write_partition_figure()


def run(
    source: Any = None,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunResult:
    """Run (or resume) the experiment a config describes; returns the result. ``overwrite``
    replaces an earlier run of the same name, which is otherwise refused."""
    exp = Experiment.from_config(
        source, overrides, resume=resume, overwrite=overwrite, progress=progress
    )
    return exp.run()
