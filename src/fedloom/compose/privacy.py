"""``[privacy]``: the strategy wrapped in its privacy stage (:mod:`fedloom.privacy`).

The stage needs the run's rounds and sampling rate (to calibrate a noise multiplier from
``target_epsilon`` and to account each round), so it is built once the task's client count
is known. Combinations that would break the guarantee are refused with the keys named.
"""

from __future__ import annotations

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..config import Config
from ..errors import ConfigError
from ..privacy import privacy_stage
from ..stages import Staged


def with_privacy(
    cfg: Config, strategy: Strategy | AsyncStrategy, num_clients: int
) -> Strategy | AsyncStrategy:
    """``strategy`` wrapped in the ``[privacy]`` stage, or as it is without the section."""
    p = cfg.privacy
    if p is None:
        return strategy
    where = f"privacy.mode = {p.mode!r}"
    if isinstance(strategy, AsyncStrategy):
        raise ConfigError(
            f"{where} cannot be combined with strategy.name = {cfg.strategy.name!r}: it is "
            "asynchronous, and the accountant counts synchronous rounds of sampled clients"
        )
    if cfg.topology is not None:
        raise ConfigError(f"{where} cannot be combined with [topology]: edges aggregate in clear")
    rate = strategy.cohort_size(num_clients) / num_clients
    options = p.model_dump(exclude={"mode", "noise_multiplier"}, exclude_none=True)
    try:
        stage = privacy_stage(
            p.mode,
            rounds=cfg.rounds,
            sampling_rate=rate,
            noise_multiplier=p.noise_multiplier,
            **options,
        )
        return Staged(strategy, [stage])
    except ValueError as e:
        raise ConfigError(str(e)) from None
