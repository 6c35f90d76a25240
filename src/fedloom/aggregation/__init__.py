"""Aggregators: how client buffers are combined. Any strategy can use any aggregator."""

from .base import Aggregator
from .mean import WeightedMean

__all__ = ["Aggregator", "WeightedMean"]
