"""Which strategies central DP can wrap, and the refusals that name the keys for the rest.

DP-FedAvg's guarantee rests on one analysis: each client moves the released sum by at most
C (its clipped delta), and the sum gets Gaussian noise of std z*C. That holds when the
server combines updates by a mean and releases nothing else about them. So central DP
wraps strategies whose aggregation is "average, then a server step" (FedAvg and its
subclasses that keep its aggregation: FedProx, FedPer, Ditto; the FedOpt family: FedAvgM,
FedAdagrad, FedAdam, FedYogi) with the mean aggregator. Median, Krum and trimmed mean pick or
drop individual updates (their sensitivity is not C); strategies that aggregate in their
own way (SCAFFOLD's control variates, FedDyn's state, FedNova's step counts, q-FFL's
losses, clustered models) release more than the noised mean.
"""

from __future__ import annotations

import logging
from typing import Any

from ..aggregation import WeightedMean
from ..algorithms.base import Strategy
from ..algorithms.fedavg import FedAvg
from ..algorithms.fedopt import FedOpt
from ..registry import AGGREGATORS, STRATEGIES, Registry

log = logging.getLogger("fedloom")

MEAN_STEPS = (FedAvg.aggregate, FedOpt.aggregate)


def registered_name(registry: Registry[Any], obj: object) -> str:
    """The name ``obj``'s class is registered under, else the class name."""
    for name in registry.names():
        if registry.get(name) is type(obj):
            return name
    return type(obj).__name__


def check_mean_strategy(
    strategy: Strategy, setting: str, strategy_why: str, mean_why: str
) -> FedAvg | FedOpt:
    """Raise ValueError naming ``setting`` and the strategy's keys unless ``strategy``
    combines updates by a mean and a server step (FedAvg's or FedOpt's aggregation) with the
    mean aggregator; ``strategy_why`` and ``mean_why`` say what the setting would lose."""
    name = registered_name(STRATEGIES, strategy)
    if not isinstance(strategy, FedAvg | FedOpt) or type(strategy).aggregate not in MEAN_STEPS:
        raise ValueError(
            f"{setting} cannot be combined with strategy.name = {name!r}: {strategy_why}; use "
            "fedavg, fedprox, fedper, ditto, fedavgm, fedadagrad, fedadam or fedyogi"
        )
    if type(strategy.aggregator) is not WeightedMean:
        agg = registered_name(AGGREGATORS, strategy.aggregator)
        raise ValueError(
            f"{setting} cannot be combined with strategy.options.aggregator = {agg!r}: "
            f"{mean_why}; use strategy.options.aggregator = 'mean'"
        )
    return strategy


def check_central(strategy: Strategy) -> None:
    """Raise ValueError naming the keys when central DP cannot keep its guarantee with
    ``strategy``; warn that sample-count weights are replaced by uniform ones."""
    mean = check_mean_strategy(
        strategy,
        "privacy.mode = 'central'",
        "central DP clips and noises the mean of the model updates, and this strategy "
        "aggregates in its own way or with tensors of its own (control variates, step "
        "counts, losses, cluster models) that would be neither clipped nor noised",
        "the noise is calibrated to one client's bounded share of a mean, while median, "
        "Krum, trimmed mean and elastic aggregation select or reweight individual updates",
    )
    if mean.weighted:
        log.info(
            "privacy.mode = 'central': client updates are averaged uniformly (DP-FedAvg); "
            "strategy.weighted = true is not used, since sample-count weights would let one "
            "client's share of the mean exceed the clipping bound"
        )
