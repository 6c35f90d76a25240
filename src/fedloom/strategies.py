"""Every strategy, its client-side parts and its registry, in one namespace.

The implementations live one per file under :mod:`fedloom.algorithms`; this module is the
place a user imports them from (``from fedloom.strategies import FedProx``), so the top-level
``fedloom`` stays the handful of names the README teaches. :func:`personalised_accuracy`
is here too: it scores the per-client models of the personalised strategies.
"""

from .algorithms import (
    IFCA,
    QFFL,
    AdaptiveFedOpt,
    AsyncStrategy,
    ClientAlgorithm,
    Ditto,
    FedAdagrad,
    FedAdam,
    FedAsync,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedDyn,
    FedNova,
    FedOpt,
    FedPer,
    FedProx,
    FedYogi,
    KMeansClustered,
    LocalRun,
    RoundPlan,
    Scaffold,
    Strategy,
    register_client_algorithm,
)
from .personal import personalised_accuracy
from .registry import STRATEGIES, register_strategy

__all__ = [
    "IFCA",
    "QFFL",
    "STRATEGIES",
    "AdaptiveFedOpt",
    "AsyncStrategy",
    "ClientAlgorithm",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedDyn",
    "FedNova",
    "FedOpt",
    "FedPer",
    "FedProx",
    "FedYogi",
    "KMeansClustered",
    "LocalRun",
    "RoundPlan",
    "Scaffold",
    "Strategy",
    "personalised_accuracy",
    "register_client_algorithm",
    "register_strategy",
]
