"""``[simulation]`` (and ``[topology]``, torchrun): the engine that trains each round's clients.

An engine builder is ``(config, task) -> (ParamSpec -> backend)``: it refuses, as a
ConfigError naming the key, what it cannot run, and returns the factory the round loop calls
with the model's spec. The built-in engines register here; a new one is one builder and one
``register_engine`` line (here, or in any module imported before the config is read), and
``simulation.engine`` and ``--engine`` take its name. The network runtime's aggregator
(:func:`fedloom.deploy.roles.aggregator`) is a builder of the same shape (one may also
return a ready backend, as :class:`~fedloom.LocalFederation`'s does: the loop takes either).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from ..algorithms.base import Strategy
from ..compression.link import Compression
from ..config import Config, StrategyConfig
from ..errors import ConfigError
from ..params import ParamSpec
from ..registry import ENGINES, register_engine
from ..simulation.distributed import DistributedClients, in_distributed_env
from ..simulation.engine import InProcessClients
from ..simulation.hierarchy import HierarchicalClients
from ..simulation.pool import ProcessPoolClients
from ..simulation.vectorized import VectorizedClients
from ..task import Task
from ..topology import Topology
from .strategy import build_strategy

log = logging.getLogger("fedloom")

BackendFactory = Callable[[ParamSpec], Any]
EngineBuilder = Callable[[Config, Task], BackendFactory]


def build_engine(cfg: Config, task: Task, network: EngineBuilder | None = None) -> BackendFactory:
    """The network runtime's backend when ``network`` is given, else the simulation engine
    :func:`engine_name` chooses."""
    if network is not None:
        if cfg.topology is not None:  # relays aggregate and re-send without the chains
            no_compression(cfg, "a [topology] (relays)")
        if cfg.runtime.secagg is not None and cfg.compression.up:
            raise ConfigError(
                f"compression.up = {cfg.compression.up} with runtime.secagg: secure "
                "aggregation quantises and masks the uploads itself; remove compression.up "
                "(compression.down may stay)"
            )
        if cfg.train.state_memory_mb is not None:
            log.warning("train.state_memory_mb applies to the simulation only: ignored")
        if cfg.simulation.engine != "sequential":
            log.warning("simulation.engine applies to the simulation only: ignored")
        return network(cfg, task)
    builder: EngineBuilder = ENGINES.get(engine_name(cfg, in_distributed_env()))
    return builder(cfg, task)


def engine_name(cfg: Config, distributed: bool) -> str:
    """``simulation.engine``, or the engine the run implies: each rank's share under torchrun,
    the hierarchy for a ``[topology]``; another engine named beside them is refused."""
    name = cfg.simulation.engine
    if distributed and name not in ("sequential", "torchrun"):
        raise ConfigError(
            f"simulation.engine = {name!r}: under torchrun each rank trains its share "
            "sequentially; leave it 'sequential'"
        )
    if cfg.topology is not None:
        if name not in ("sequential", "hierarchy"):
            raise ConfigError(f"simulation.engine = {name!r}: a topology runs 'sequential'")
        if cfg.attack.kind or distributed:
            raise ConfigError(
                "topology: hierarchical simulation runs in one process without attacks"
            )
        return "hierarchy"
    return "torchrun" if distributed else name


def _no_state_memory(cfg: Config) -> None:
    if cfg.train.state_memory_mb is not None:
        raise ConfigError(
            f"simulation.engine = {cfg.simulation.engine!r}: train.state_memory_mb is for "
            "'sequential'"
        )


def no_compression(cfg: Config, engine: str | None = None) -> None:
    """Refuse ``[compression]`` where the engine (or the runtime's part) does not run the
    chains, as a ConfigError naming the keys and ``engine``."""
    c = cfg.compression
    keys = [k for k, v in (("compression.up", c.up), ("compression.down", c.down)) if v]
    if keys:
        where = engine or f"simulation.engine = {cfg.simulation.engine!r}"
        raise ConfigError(
            f"{' and '.join(keys)} with {where}: compression runs in the 'sequential' engine "
            "and between fedloom server and fedloom client or an own loop's fedloom.connect "
            "(no topology); set simulation.engine = 'sequential' or remove the chains"
        )


def compression(cfg: Config) -> Compression | None:
    """The run's chains (checked when the config loaded), or None without any."""
    c = cfg.compression
    return Compression(c.up, c.down, cfg.seed) if c.up or c.down else None


def sequential(cfg: Config, task: Task) -> BackendFactory:
    """One client after another with one reused model (:class:`InProcessClients`)."""
    chains = compression(cfg)
    return lambda spec: InProcessClients(
        task, cfg.seed, state_memory_mb=cfg.train.state_memory_mb, compression=chains
    )


register_engine("sequential", sequential)


def vectorized(cfg: Config, task: Task) -> BackendFactory:
    """All of a round's clients at once (:class:`VectorizedClients`)."""
    _no_state_memory(cfg)
    no_compression(cfg)
    return lambda spec: VectorizedClients(task, cfg.seed)


register_engine("vectorized", vectorized)


def pool(cfg: Config, task: Task) -> BackendFactory:
    """``simulation.workers`` forked processes (:class:`ProcessPoolClients`)."""
    _no_state_memory(cfg)
    no_compression(cfg)
    sim = cfg.simulation
    return lambda spec: ProcessPoolClients(
        task, cfg.seed, workers=sim.workers, threads=sim.threads
    )


register_engine("pool", pool)


def torchrun(cfg: Config, task: Task) -> BackendFactory:
    """Under torchrun each rank trains a share of every round (:class:`DistributedClients`)."""
    no_compression(cfg, "torchrun")
    if not in_distributed_env():
        raise ConfigError(
            "simulation.engine = 'torchrun': start the run under torchrun "
            "(torchrun --nproc-per-node N -m fedloom run CONFIG); it is chosen there by itself"
        )
    return lambda spec: DistributedClients(
        task, cfg.seed, state_memory_mb=cfg.train.state_memory_mb
    )


register_engine("torchrun", torchrun)


def hierarchy(cfg: Config, task: Task) -> Callable[[Any], HierarchicalClients]:
    """The root's backend for a ``[topology]`` run: edges run ``edge_strategy`` (the run's
    strategy with the section's keys on top) for ``edge_rounds`` rounds per root round."""
    no_compression(cfg, "a [topology] (the hierarchy engine)")
    section = cfg.topology
    if section is None:
        raise ConfigError("simulation.engine = 'hierarchy' needs a [topology] section")
    topology = Topology.from_config(section)
    merged = {**cfg.strategy.model_dump(), **section.edge_strategy}
    edge = build_strategy(cfg.model_copy(update={"strategy": StrategyConfig(**merged)}))
    return lambda spec: HierarchicalClients(
        task,
        topology,
        cfg.seed,
        edge_strategy=cast(Strategy, edge),  # passed on as it is, as the hierarchy takes it
        edge_rounds=section.edge_rounds,
        state_memory_mb=cfg.train.state_memory_mb,
    )


register_engine("hierarchy", hierarchy)
