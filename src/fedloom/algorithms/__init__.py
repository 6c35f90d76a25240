"""Strategies, one per file, behind the :class:`Strategy` protocol."""

from .asynchronous import AsyncStrategy, staleness_weight
from .base import RoundPlan, Strategy
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedasync import FedAsync
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedbuff import FedBuff
from .fedopt import AdaptiveFedOpt, FedOpt
from .fedyogi import FedYogi

__all__ = [
    "AdaptiveFedOpt",
    "AsyncStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedOpt",
    "FedYogi",
    "RoundPlan",
    "Strategy",
    "staleness_weight",
]
