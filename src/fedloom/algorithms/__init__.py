"""Strategies, one per file, behind the :class:`Strategy` protocol."""

from .base import RoundPlan, Strategy
from .fedavg import FedAvg

__all__ = ["FedAvg", "RoundPlan", "Strategy"]
