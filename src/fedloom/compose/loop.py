"""``rounds``, ``seed``, ``[eval]``, the round loop's strategy options and the network
runtime's short-round policy: the one round loop over the built task, strategy and backend
(:class:`AsyncFederation` for an asynchronous strategy, which runs over the network only)."""

from __future__ import annotations

from typing import Any

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..config import Config
from ..errors import ConfigError
from ..federation import Callback, Federation
from ..federation.async_loop import AsyncFederation
from ..federation.node_metrics import NodeMetrics
from ..task import Task
from ..topology import Topology
from .engines import BackendFactory
from .strategy import loop_options


def build_federation(
    cfg: Config,
    task: Task,
    strategy: Strategy | AsyncStrategy,
    backend: BackendFactory,
    callbacks: list[Callback],
    *,
    networked: bool,
) -> Federation:
    """The round loop; ``callbacks`` (the recorder) run after the hierarchy's node metrics."""
    loop: dict[str, Any] = dict(
        rounds=cfg.rounds,
        seed=cfg.seed,
        eval_every=cfg.eval.every,
        target=target(cfg),
        **loop_options(cfg),
    )
    if cfg.train.stragglers:
        loop["stragglers"] = cfg.train.stragglers
    if networked:
        loop.update(short_round=cfg.runtime.short_round, round_retries=cfg.runtime.round_retries)
    if isinstance(strategy, AsyncStrategy):
        if not networked:
            raise ConfigError(
                f"strategy {cfg.strategy.name!r} is asynchronous: run it over the network "
                "runtime (fedloom server/client, start or launch), not as a simulation"
            )
        every = cfg.strategy.every_seconds
        return AsyncFederation(
            task, strategy, backend, every_seconds=every, callbacks=callbacks, **loop
        )
    if cfg.topology is not None:  # per-node metrics, before the recorder writes the record
        topology = Topology.from_config(cfg.topology)
        names = topology.children(topology.roots()[0]) if networked else None  # relays by id
        callbacks = [NodeMetrics(names), *callbacks]
    return Federation(task, strategy, backend, callbacks=callbacks, **loop)


def target(cfg: Config) -> tuple[Any, ...] | None:
    """``(metric, value[, mode])`` that stops the run once an evaluation reaches it."""
    e = cfg.eval
    if e.target_metric is None:
        return None
    return (e.target_metric, e.target_value, *([e.target_mode] if e.target_mode else []))
