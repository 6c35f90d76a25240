"""Strategies, one per file, behind the :class:`Strategy` protocol."""

from .asynchronous import AsyncStrategy, staleness_weight
from .base import RoundPlan, Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedasync import FedAsync
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedbuff import FedBuff
from .fedopt import AdaptiveFedOpt, FedOpt
from .fedprox import FedProx
from .fedyogi import FedYogi

__all__ = [
    "AdaptiveFedOpt",
    "AsyncStrategy",
    "ClientAlgorithm",
    "LocalRun",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "RoundPlan",
    "Strategy",
    "register_client_algorithm",
    "staleness_weight",
]
