"""Strategies, one per file, behind the :class:`Strategy` protocol."""

from .asynchronous import AsyncStrategy, staleness_weight
from .base import RoundPlan, Strategy
from .fedasync import FedAsync
from .fedavg import FedAvg
from .fedbuff import FedBuff

__all__ = [
    "AsyncStrategy",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "RoundPlan",
    "Strategy",
    "staleness_weight",
]
