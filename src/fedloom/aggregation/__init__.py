"""Aggregators: how client buffers are combined. Any strategy can use any aggregator."""

from .base import Aggregator
from .krum import Krum, MultiKrum
from .mean import WeightedMean
from .median import CoordinateMedian, StackingAggregator
from .trimmed_mean import TrimmedMean

__all__ = [
    "Aggregator",
    "CoordinateMedian",
    "Krum",
    "MultiKrum",
    "StackingAggregator",
    "TrimmedMean",
    "WeightedMean",
]
