"""``[strategy]``: the registered strategy with its options, its aggregator, and the options
the round loop applies to any strategy (:data:`~fedloom.config.LOOP_OPTIONS`)."""

from __future__ import annotations

import inspect
import logging
from math import inf
from typing import Any

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..config import LOOP_OPTIONS, Config
from ..errors import ConfigError
from ..registry import AGGREGATORS, STRATEGIES

log = logging.getLogger("fedloom")


def build_strategy(cfg: Config) -> Strategy | AsyncStrategy:
    """``strategy.name`` with ``clients_per_round``/``fraction``/``clusters`` where it takes
    them and ``strategy.options`` (an ``aggregator`` option by registered name)."""
    s = cfg.strategy
    cls = STRATEGIES.get(s.name)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {
        k: v
        for k, v in (("clients_per_round", s.clients_per_round), ("fraction", s.fraction))
        if k in params
    }
    if s.clusters is not None:
        if "clusters" in params:
            kwargs["clusters"] = s.clusters
        elif s.clusters > 1:
            log.warning(
                "strategy %s does not cluster clients: clusters=%d ignored", s.name, s.clusters
            )
    unknown = set(s.options) - set(params) - LOOP_OPTIONS
    if unknown:
        raise ConfigError(
            f"strategy.options: {sorted(unknown)} not taken by {s.name}; it takes "
            f"{[p for p in params if p not in kwargs]}"
        )
    options = {k: v for k, v in s.options.items() if k not in LOOP_OPTIONS}
    if "aggregator" in options:
        options["aggregator"] = aggregator(options["aggregator"])
    try:
        strategy: Strategy | AsyncStrategy = cls(**kwargs, **options)
    except ValueError as e:
        raise ConfigError(f"strategy: {e}") from None
    return strategy


def aggregator(spec: Any) -> Any:
    """``"median"`` or ``{"name": "trimmed_mean", "beta": 0.2}`` -> the registered aggregator;
    anything else (an aggregator object given from Python) as it is."""
    if not isinstance(spec, str | dict):
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ConfigError("strategy.options.aggregator needs a name")
    try:
        return AGGREGATORS.get(name)(**spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy.options.aggregator {name!r}: {e}") from None


def loop_options(cfg: Config) -> dict[str, Any]:
    """The strategy options the round loop applies itself (``max_update_norm``)."""
    norm = cfg.strategy.options.get("max_update_norm")
    if norm is None:
        return {}
    if isinstance(norm, bool) or not isinstance(norm, int | float) or not 0 < norm < inf:
        raise ConfigError(f"strategy.options.max_update_norm must be > 0, got {norm!r}")
    return {"max_update_norm": float(norm)}
