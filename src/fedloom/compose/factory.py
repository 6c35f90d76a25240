"""``[task] factory``: a Task of your own, by import path (``"module:callable"``) or by the
name it was registered under (:func:`fedloom.registry.register_task`).

Anything that goes wrong on the way (the import, the options, the factory raising, returning
something that is not a Task) is one ConfigError naming ``task.factory`` and the cause,
chained, so ``--verbose`` shows the user's traceback.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config import Config, TaskConfig
from ..errors import ConfigError
from ..registry import TASKS
from ..seeding import derive_seed, seed_torch
from ..task import Task


def custom_task(cfg: Config) -> Task:
    """Import ``task.factory`` and call it with ``task.options`` (and the run seed, when it
    takes ``seed``).

    The factory runs with torch's global generator seeded from the run seed (and restored
    after), so a factory that draws its data with ``torch.rand`` builds the same clients in
    every process of the run."""
    section = cfg.task
    assert section is not None
    factory = import_factory(section)
    where = f"task.factory = {section.factory!r}"
    options = dict(section.options)
    params: Mapping[str, inspect.Parameter]
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
            raise ConfigError(f"{where} raised while building the task: {summary(e)}") from e
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
    """A registered task name, or ``module:attr`` imported with the working directory on
    ``sys.path`` (as ``python -m`` puts it there); a ConfigError naming the path otherwise.
    Only the import: ``fedloom launch`` checks this once before starting its processes."""
    where = f"task.factory = {section.factory!r}"
    if ":" not in section.factory:
        try:
            return TASKS.get(section.factory)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    module_name, _, attr = section.factory.partition(":")
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
        raise ConfigError(f"{where}: importing {module_name!r} failed: {summary(e)}") from e
    except Exception as e:  # the user's module raised on import: summarised, chained
        raise ConfigError(f"{where}: importing {module_name!r} failed: {summary(e)}") from e
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
    factory: Callable[..., Any] = obj
    return factory


def summary(e: BaseException) -> str:
    """``Type: first line of the message``, the one line a CLI error has room for."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
