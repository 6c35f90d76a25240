"""Every aggregator (how a round's client buffers are combined) and its registry.

The implementations live one per file under :mod:`fedloom.aggregation`; this is the namespace
a user imports them from (``from fedloom.aggregators import Krum``). Any strategy takes any
of them.
"""

from .aggregation import (
    Aggregator,
    CoordinateMedian,
    ElasticAggregator,
    Krum,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)
from .registry import AGGREGATORS, register_aggregator

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CoordinateMedian",
    "ElasticAggregator",
    "Krum",
    "MultiKrum",
    "TrimmedMean",
    "WeightedMean",
    "register_aggregator",
]
