"""``[data]``, ``[model]``, ``[train]`` or ``[task]``: the run's Task, and what it was built from.

Without a ``[task]`` section the built-in :class:`ClassificationTask` of the registered
dataset, partitioner and model is the default; a ``[task]`` names a factory of your own
(:mod:`fedloom.compose.factory`). Every process of a run builds its Task through
:func:`task_parts`, so the aggregator, clients, relays and torchrun ranks agree on it (and
on the torch thread count, :mod:`fedloom.compose.threads`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from ..accel import deterministic, resolve_device
from ..classification import ClassificationTask
from ..config import Config
from ..data.base import TensorDataset
from ..errors import ConfigError
from ..models import build_model
from ..task import Task
from .data import load_dataset, partition
from .factory import custom_task
from .threads import apply_threads


@dataclass
class TaskParts:
    """The Task, the built-in task's dataset and split (None for a task of your own, which
    keeps its data to itself) and what the run's report says about how it was made."""

    task: Task
    dataset: TensorDataset | None = None
    parts: list[np.ndarray] | None = None
    report: dict[str, Any] = field(default_factory=dict)


def task_parts(cfg: Config) -> TaskParts:
    """The ``[task]`` factory's Task, or by default the built-in classification task; first
    this process's torch threads are set to ``simulation.threads``, as in every process."""
    apply_threads(cfg)
    if cfg.task is not None:
        task = custom_task(cfg)
        if cfg.train.precision != "fp32":  # the engines give it to the task's loop as ctx.amp
            task.mixed_precision = cfg.train.precision
        return TaskParts(task, report={"task_factory": cfg.task.factory})
    dataset = load_dataset(cfg)
    parts = partition(cfg, dataset)
    return TaskParts(build_task(cfg, dataset, parts), dataset, parts)


def load_task(cfg: Config) -> Task:
    """The run's Task alone (a client, a relay)."""
    return task_parts(cfg).task


def build_task(cfg: Config, dataset: TensorDataset, parts: list[np.ndarray]) -> ClassificationTask:
    """The built-in task: ``[model]`` over ``dataset`` split into ``parts``, trained as
    ``[train]`` says."""
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
        precision=t.precision,
    )


def determinism(cfg: Config) -> contextlib.AbstractContextManager[None]:
    """``train.deterministic``'s context: deterministic algorithms (and cuBLAS's workspace on
    CUDA) while a run is built and while it runs, put back as they were after each."""
    return deterministic(cfg.train.deterministic, resolve_device(cfg.train.device))


def _model_from_config(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``build_model`` for the config's model; options it cannot build with (a negative
    width, a CNN on flat inputs) become a ConfigError naming ``model.name``/``model.options``."""
    try:
        model: nn.Module = build_model(
            cfg.model.name, input_shape, num_classes, **cfg.model.options
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"model.name = {cfg.model.name!r} with model.options = {cfg.model.options} cannot "
            f"be built for inputs of shape {tuple(input_shape)}: {type(e).__name__}: {e}"
        ) from e
    return model
