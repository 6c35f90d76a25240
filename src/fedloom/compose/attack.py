"""``[attack]``: Byzantine clients in simulation. A label flip wraps the task; a sign flip or
scaled noise wraps the engine's backend. The attackers, a seeded share of all clients, are
chosen once here and named in the run's report."""

from __future__ import annotations

import logging

from ..classification import ClassificationTask
from ..config import Config
from ..errors import ConfigError
from ..simulation.attacks import ATTACKS, AttackedClients, LabelFlip, choose_attackers
from .engines import BackendFactory
from .task import TaskParts

log = logging.getLogger("fedloom")


def attack_task(cfg: Config, parts: TaskParts, *, networked: bool) -> list[int]:
    """The attacking clients (none without ``attack.kind``); a label flip replaces
    ``parts.task`` with the flipped one. Both are recorded in ``parts.report``."""
    kind = cfg.attack.kind
    if not kind:
        return []
    if networked:
        raise ConfigError("attack: attacks are simulated; run without the network runtime")
    if kind == "label_flip" and not isinstance(parts.task, ClassificationTask):
        factory = cfg.task.factory if cfg.task is not None else None
        raise ConfigError(
            f"attack.kind = 'label_flip' flips the labels of a ClassificationTask; "
            f"task.factory = {factory!r} built a {type(parts.task).__name__}"
        )
    attackers = choose_attackers(parts.task.num_clients, cfg.attack.fraction, cfg.seed)
    if kind == "label_flip":
        parts.task = LabelFlip().wrap(parts.task, attackers)
    parts.report["attack"] = {**cfg.attack.model_dump(), "attackers": attackers}
    log.info("attack %s: clients %s attack", kind, attackers)
    return attackers


def attacked(cfg: Config, engine: BackendFactory, attackers: list[int]) -> BackendFactory:
    """The engine, with the attackers' updates rewritten for a sign flip or scaled noise."""
    if cfg.attack.kind not in ("sign_flip", "scaled_noise"):
        return engine
    attack = ATTACKS[cfg.attack.kind](cfg.attack.scale)
    return lambda spec: AttackedClients(engine(spec), attack, attackers, cfg.seed)
