"""Aggregators: how client buffers are combined. Any strategy can use any aggregator."""

from .base import Aggregator
from .krum import Krum, MultiKrum
from .mean import WeightedMean
from .median import CoordinateMedian, StackingAggregator
from .trimmed_mean import TrimmedMean

# isort: split
# last: elastic imports the client-part base from fedloom.algorithms, whose strategies import
# the names above from this package
from .elastic import ElasticAggregator, ElasticImportance

__all__ = [
    "Aggregator",
    "CoordinateMedian",
    "ElasticAggregator",
    "ElasticImportance",
    "Krum",
    "MultiKrum",
    "StackingAggregator",
    "TrimmedMean",
    "WeightedMean",
]
