"""From a config to a finished run: dataset, partition, model, task, strategy, loop, run dir.

    import fedloom
    result = fedloom.run("examples/mnist_dirichlet.toml", overrides=["rounds=5"])

is all the CLI's ``fedloom run`` does.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from math import inf
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms.asynchronous import AsyncStrategy
from .algorithms.base import Strategy
from .classification import ClassificationTask
from .config import LOOP_OPTIONS, Config, StrategyConfig, TaskConfig, load_config
from .data.base import TensorDataset
from .errors import ConfigError
from .federation import Federation, RunResult, load_checkpoint
from .federation.async_loop import AsyncFederation
from .federation.node_metrics import NodeMetrics
from .federation.recorder import CHECKPOINT, RunRecorder
from .federation.rundir import check_params, check_resumable, check_run_dir
from .models import build_model
from .observe import TelegramNotifier, WebhookNotifier
from .registry import AGGREGATORS, DATASETS, PARTITIONERS, STRATEGIES
from .seeding import derive_seed, seed_torch
from .simulation.attacks import ATTACKS, AttackedClients, LabelFlip, choose_attackers
from .simulation.distributed import DistributedClients, in_distributed_env
from .simulation.engine import InProcessClients
from .simulation.hierarchy import HierarchicalClients
from .simulation.pool import ProcessPoolClients
from .simulation.vectorized import VectorizedClients
from .task import Task
from .topology import Topology

log = logging.getLogger("fedloom")


def load_dataset(cfg: Config) -> TensorDataset:
    """Call the registered loader with the config's root/download/seed where it takes them."""
    loader = DATASETS.get(cfg.data.dataset)
    offered = {"root": cfg.data.root, "download": cfg.data.download, "seed": cfg.seed}
    if cfg.data.partition == "natural":
        offered["num_clients"] = cfg.data.num_clients
    kwargs = _accepted(loader, offered, drop_none=True)
    return loader(**kwargs, **cfg.data.options)


def partition(cfg: Config, dataset: TensorDataset) -> list[np.ndarray]:
    """Split the training set as the config says, seeded from the run seed."""
    d = cfg.data
    if d.partition == "natural":
        if dataset.natural_partition is None:
            raise ConfigError(
                f"data.partition: dataset {d.dataset!r} has no natural partition; "
                f"choose one of {[p for p in PARTITIONERS.names() if p != 'natural']}"
            )
        return [np.asarray(p) for p in dataset.natural_partition]
    cls = PARTITIONERS.get(d.partition)
    offered = {
        "num_clients": d.num_clients,
        "alpha": d.alpha,
        "shards_per_client": d.shards_per_client,
        "exponent": d.exponent,
        "min_samples": d.min_samples,
    }
    try:
        partitioner = cls(**_accepted(cls, offered))
        return partitioner(dataset.train_y.numpy(), derive_seed(cfg.seed, "partition"))
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None


def _model_from_config(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """``build_model`` for the config's model; options it cannot build with (a negative
    width, a CNN on flat inputs) become a ConfigError naming ``model.name``/``model.options``."""
    try:
        return build_model(cfg.model.name, input_shape, num_classes, **cfg.model.options)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"model.name = {cfg.model.name!r} with model.options = {cfg.model.options} cannot "
            f"be built for inputs of shape {tuple(input_shape)}: {type(e).__name__}: {e}"
        ) from e


def build_task(cfg: Config, dataset: TensorDataset, parts: list[np.ndarray]) -> ClassificationTask:
    t = cfg.train
    model_fn = partial(_model_from_config, cfg, dataset.input_shape, dataset.num_classes)
    return ClassificationTask(
        model_fn,
        dataset,
        parts,
        lr=t.lr,
        batch_size=t.batch_size,
        local_epochs=t.local_epochs,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        optimizer=t.optimizer,
        device=t.device,
    )


def load_task(cfg: Config) -> Task:
    """The run's Task: the ``[task]`` factory's, or by default the built-in classification
    task of ``[data]``, ``[model]`` and ``[train]``. Every process of a run builds it so."""
    if cfg.task is None:
        dataset = load_dataset(cfg)
        return build_task(cfg, dataset, partition(cfg, dataset))
    return custom_task(cfg)


def custom_task(cfg: Config) -> Task:
    """Import ``task.factory`` and call it with ``task.options`` (and the run seed, when it
    takes ``seed``). Anything that goes wrong on the way is one ConfigError naming the import
    path and the cause (chained, so ``--verbose`` shows the user's traceback).

    The factory runs with torch's global generator seeded from the run seed (and restored
    after), so a factory that draws its data with ``torch.rand`` builds the same clients in
    every process of the run."""
    section = cfg.task
    assert section is not None
    factory = import_factory(section)
    where = f"task.factory = {section.factory!r}"
    options = dict(section.options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        params = {}
    if params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        taken = [n for n, p in params.items() if p.kind in named]
        if unknown := sorted(set(options) - set(taken)):
            raise ConfigError(
                f"task.options: {unknown} not taken by {section.factory}; it takes {taken}"
            )
    if "seed" in params and "seed" not in options:
        options["seed"] = cfg.seed
    with torch.random.fork_rng(devices=[]):
        seed_torch(derive_seed(cfg.seed, "task"))
        try:
            task = factory(**options)
        except Exception as e:  # the user's code: summarised here, its traceback chained
            raise ConfigError(f"{where} raised while building the task: {_summary(e)}") from e
    if not isinstance(task, Task):
        raise ConfigError(
            f"{where} returned {type(task).__module__}.{type(task).__qualname__}, not a "
            "fedloom.Task"
        )
    try:
        cfg.check_clients(task.num_clients, f"the task's {task.num_clients}")
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None
    return task


def import_factory(section: TaskConfig) -> Callable[..., Any]:
    """``module:attr`` of ``task.factory``, imported with the working directory on
    ``sys.path`` (as ``python -m`` puts it there); a ConfigError naming the path otherwise.
    Only the import: ``fedloom launch`` checks this once before starting its processes."""
    module_name, _, attr = section.factory.partition(":")
    where = f"task.factory = {section.factory!r}"
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise ConfigError(
                f"{where}: no module named {e.name!r} (looked in the working directory {cwd} "
                "and on PYTHONPATH)"
            ) from e
        raise ConfigError(f"{where}: importing {module_name!r} failed: {_summary(e)}") from e
    except Exception as e:  # the user's module raised on import: summarised, chained
        raise ConfigError(f"{where}: importing {module_name!r} failed: {_summary(e)}") from e
    obj: Any = module
    parts = attr.split(".")
    for depth, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = f"{module_name}:{'.'.join(parts[:depth])}" if depth else module_name
            kind = "" if depth else "module "
            raise ConfigError(f"{where}: {kind}{owner!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where} is a {type(obj).__name__}, not a callable that returns a Task")
    return obj


def _summary(e: BaseException) -> str:
    """``Type: first line of the message``, the one line a CLI error has room for."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def build_strategy(cfg: Config) -> Strategy | AsyncStrategy:
    s = cfg.strategy
    cls = STRATEGIES.get(s.name)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {
        k: v
        for k, v in (("clients_per_round", s.clients_per_round), ("fraction", s.fraction))
        if k in params
    }
    if s.clusters is not None:
        if "clusters" in inspect.signature(cls).parameters:
            kwargs["clusters"] = s.clusters
        elif s.clusters > 1:
            log.warning(
                "strategy %s does not cluster clients: clusters=%d ignored", s.name, s.clusters
            )
    unknown = set(s.options) - set(inspect.signature(cls).parameters) - LOOP_OPTIONS
    if unknown:
        raise ConfigError(
            f"strategy.options: {sorted(unknown)} not taken by {s.name}; it takes "
            f"{[p for p in inspect.signature(cls).parameters if p not in kwargs]}"
        )
    options = {k: v for k, v in s.options.items() if k not in LOOP_OPTIONS}
    agg = options.get("aggregator")
    if isinstance(agg, str | dict):  # "median" or {"name": "trimmed_mean", "beta": 0.2}
        spec = {"name": agg} if isinstance(agg, str) else dict(agg)
        name = spec.pop("name", None)
        if not name:
            raise ConfigError("strategy.options.aggregator needs a name")
        try:
            options["aggregator"] = AGGREGATORS.get(name)(**spec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"strategy.options.aggregator {name!r}: {e}") from None
    try:
        return cls(**kwargs, **options)
    except ValueError as e:
        raise ConfigError(f"strategy: {e}") from None


def hierarchy(cfg: Config, task: Task) -> Callable[[Any], HierarchicalClients]:
    """The root's backend for a ``[topology]`` run: edges run ``edge_strategy`` (the run's
    strategy with the section's keys on top) for ``edge_rounds`` rounds per root round."""
    assert cfg.topology is not None
    topology = Topology.from_config(cfg.topology)
    merged = {**cfg.strategy.model_dump(), **cfg.topology.edge_strategy}
    edge = build_strategy(cfg.model_copy(update={"strategy": StrategyConfig(**merged)}))
    return lambda spec: HierarchicalClients(
        task,
        topology,
        cfg.seed,
        edge_strategy=edge,
        edge_rounds=cfg.topology.edge_rounds,
        state_memory_mb=cfg.train.state_memory_mb,
    )


def notifiers(cfg: Config) -> list:
    n = cfg.notify
    out: list = []
    if n.webhook_url:
        out.append(WebhookNotifier(n.webhook_url, proxy=n.proxy))
    if n.telegram_token and n.telegram_chat_id:
        out.append(
            TelegramNotifier(
                n.telegram_token, n.telegram_chat_id, n.telegram_api_base, proxy=n.proxy
            )
        )
    return out


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
        overrides: list[str] = (),
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool | None = None,
        backend: Any = None,
    ) -> Experiment:
        """Build the run a config describes. ``backend(cfg, task)``, when given, makes what replaces
        the in-process simulation (e.g. :func:`fedloom.deploy.roles.aggregator` over gRPC).

        The run directory is checked first, before any data is loaded: a fresh run refuses
        an earlier run's results unless ``overwrite``; ``resume`` verifies the checkpoint and
        refuses a config that changes what the run trains (:mod:`fedloom.federation.rundir`).
        """
        cfg = load_config(source, list(overrides))
        run_dir = Path(cfg.output.dir) / cfg.name
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
        saved = load_checkpoint(run_dir / CHECKPOINT) if resume else None
        if saved is not None:
            check_resumable(run_dir / CHECKPOINT, saved, cfg.effective())
        if cfg.attack.kind and backend is not None:
            raise ConfigError("attack: attacks are simulated; run without the network runtime")
        dataset: TensorDataset | None = None
        parts: list[np.ndarray] | None = None
        report: dict[str, Any] = {}
        if cfg.task is None:
            dataset = load_dataset(cfg)
            parts = partition(cfg, dataset)
            task: Task = build_task(cfg, dataset, parts)
        else:
            task = custom_task(cfg)
            report["task_factory"] = cfg.task.factory
            if cfg.attack.kind == "label_flip" and not isinstance(task, ClassificationTask):
                raise ConfigError(
                    f"attack.kind = 'label_flip' flips the labels of a ClassificationTask; "
                    f"task.factory = {cfg.task.factory!r} built a {type(task).__name__}"
                )
        attackers: list[int] = []
        if cfg.attack.kind:  # label flip wraps the task; the others wrap the backend below
            attackers = choose_attackers(task.num_clients, cfg.attack.fraction, cfg.seed)
            if cfg.attack.kind == "label_flip":
                task = LabelFlip().wrap(task, attackers)  # type: ignore[assignment]
            report["attack"] = {**cfg.attack.model_dump(), "attackers": attackers}
            log.info("attack %s: clients %s attack", cfg.attack.kind, attackers)
        distributed = backend is None and in_distributed_env()
        rank = int(os.environ.get("RANK", "0")) if distributed else 0
        if not rank:
            _check_writable(Path(cfg.output.dir))
        e = cfg.eval
        target: tuple | None = None
        if e.target_metric is not None:
            target = (e.target_metric, e.target_value, *([e.target_mode] if e.target_mode else []))
        recorder = (
            None
            if rank
            else RunRecorder(
                run_dir,
                cfg.effective(),
                resume=resume,
                overwrite=overwrite,
                tensorboard=cfg.output.tensorboard,
                figures=cfg.output.figures,
                checkpoint=cfg.output.checkpoint,
                progress=cfg.output.progress if progress is None else progress,
                notifiers=notifiers(cfg),
                notify_on_finish=cfg.notify.on_finish,
                notify_on_failure=cfg.notify.on_failure,
                extra_report={"task": task.describe(), **report},
            )
        )
        strategy = build_strategy(cfg)
        loop: dict[str, Any] = dict(
            rounds=cfg.rounds,
            seed=cfg.seed,
            eval_every=cfg.eval.every,
            target=target,
            callbacks=[recorder] if recorder is not None else [],
        )
        if cfg.train.stragglers:
            loop["stragglers"] = cfg.train.stragglers
        norm = cfg.strategy.options.get("max_update_norm")
        if norm is not None:
            if isinstance(norm, bool) or not isinstance(norm, int | float) or not 0 < norm < inf:
                raise ConfigError(f"strategy.options.max_update_norm must be > 0, got {norm!r}")
            loop["max_update_norm"] = float(norm)
        if backend is not None:
            loop.update(
                short_round=cfg.runtime.short_round, round_retries=cfg.runtime.round_retries
            )
        if isinstance(strategy, AsyncStrategy):
            if backend is None:
                raise ConfigError(
                    f"strategy {cfg.strategy.name!r} is asynchronous: run it over the network "
                    "runtime (fedloom server/client, start or launch), not as a simulation"
                )
            fed: Federation = AsyncFederation(
                task, strategy, backend(cfg, task), every_seconds=cfg.strategy.every_seconds, **loop
            )
        else:
            sim: Any = None
            state_mb = cfg.train.state_memory_mb
            engine = cfg.simulation.engine
            if backend is not None:
                if state_mb is not None:
                    log.warning("train.state_memory_mb applies to the simulation only: ignored")
                if engine != "sequential":
                    log.warning("simulation.engine applies to the simulation only: ignored")
            elif engine != "sequential":
                _check_engine(cfg, distributed)

            def clients() -> Any:
                if distributed:  # under torchrun: each rank trains a share of every round
                    return DistributedClients(task, cfg.seed, state_memory_mb=state_mb)
                if engine == "vectorized":
                    return VectorizedClients(task, cfg.seed)
                if engine == "pool":
                    workers, threads = cfg.simulation.workers, cfg.simulation.threads
                    return ProcessPoolClients(task, cfg.seed, workers=workers, threads=threads)
                return InProcessClients(task, cfg.seed, state_memory_mb=state_mb)

            if cfg.attack.kind in ("sign_flip", "scaled_noise"):
                attack = ATTACKS[cfg.attack.kind](cfg.attack.scale)

                def sim(spec: Any) -> AttackedClients:  # made when Federation makes its default
                    return AttackedClients(clients(), attack, attackers, cfg.seed)

            elif distributed or state_mb is not None or engine != "sequential":
                # else Federation makes the default
                sim = lambda spec: clients()  # noqa: E731

            if cfg.topology is not None and backend is not None:  # the root of relays
                topology = Topology.from_config(cfg.topology)
                root_children = topology.children(topology.roots()[0])
                loop["callbacks"].insert(0, NodeMetrics(root_children))
            if cfg.topology is not None and backend is None:
                if cfg.attack.kind or distributed:
                    raise ConfigError(
                        "topology: hierarchical simulation runs in one process without attacks"
                    )
                sim = hierarchy(cfg, task)
                loop["callbacks"].insert(0, NodeMetrics())  # before the recorder writes

            fed = Federation(task, strategy, backend(cfg, task) if backend else sim, **loop)
        if saved is not None:
            check_params(run_dir / CHECKPOINT, saved, fed.params.numel())
            fed.load_state_dict(saved)
        return cls(cfg, dataset, parts, task, fed, recorder)

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
            return self.federation.run()
        finally:
            close = getattr(self.federation.backend, "close", None)
            if callable(close):
                close()
            if self.config.output.figures and self.recorder is not None:
                self.write_partition_figure()


def _check_writable(directory: Path) -> None:
    """Refuse an ``output.dir`` that cannot be made or written, naming the key, rather than
    an OSError from the middle of making the run directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".fedloom-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output.dir = {str(directory)!r} is not a writable directory: {e}"
        ) from e


def _check_engine(cfg: Config, distributed: bool) -> None:
    """Refuse a ``simulation.engine`` that the rest of the config cannot run with."""
    engine = cfg.simulation.engine
    if distributed:
        raise ConfigError(
            f"simulation.engine = {engine!r}: under torchrun each rank trains its share "
            "sequentially; leave it 'sequential'"
        )
    if cfg.topology is not None:
        raise ConfigError(f"simulation.engine = {engine!r}: a topology runs 'sequential'")
    if cfg.train.state_memory_mb is not None:
        raise ConfigError(
            f"simulation.engine = {engine!r}: train.state_memory_mb is for 'sequential'"
        )


def run(
    source: Any = None,
    overrides: list[str] = (),
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


def _accepted(fn: Any, offered: dict[str, Any], drop_none: bool = False) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in offered.items() if k in params and not (drop_none and v is None)}
