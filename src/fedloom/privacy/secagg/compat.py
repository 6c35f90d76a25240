"""Which strategies secure aggregation can serve, and refusals naming the keys for the rest.

SecAgg+ gives the aggregator the sum of the round's updates and nothing else. A strategy
that combines updates by a mean and then takes a server step (FedAvg and the subclasses that
keep its aggregation, the FedOpt family) needs only that sum. Median, Krum and trimmed mean
look at individual updates; strategies that aggregate in their own way or send tensors of
their own (SCAFFOLD's control variates, FedNova's step counts, q-FFL's losses, clustered
models) need more than one summed vector, which this stage does not carry.
"""

from __future__ import annotations

import logging

from ...algorithms.base import Strategy
from ..compat import check_mean_strategy

log = logging.getLogger("fedloom")


def check_secagg(strategy: Strategy, setting: str = "secagg") -> None:
    """Raise ValueError naming the keys when ``strategy`` needs more than the sum of the
    updates; ``setting`` names the config key that turned secure aggregation on."""
    mean = check_mean_strategy(
        strategy,
        setting,
        "secure aggregation reveals only the sum of the model updates, and this strategy "
        "aggregates in its own way or with tensors of its own (control variates, step "
        "counts, losses, cluster models) that would not be summed securely",
        "median, Krum, trimmed mean and elastic aggregation need the individual updates, "
        "which secure aggregation never reveals",
    )
    if mean.weighted:
        log.info(
            "%s: client updates are summed uniformly (each client one vote); "
            "strategy.weighted = true is not used",
            setting,
        )
