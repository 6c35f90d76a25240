"""Partitioners: how the training set is split among simulated clients, plus split reports."""

from .base import Partitioner
from .dirichlet import Dirichlet
from .iid import IID
from .natural import Natural
from .quantity import PowerLaw
from .report import format_report, partition_report, plot_partition
from .shards import Shards

__all__ = [
    "IID",
    "Dirichlet",
    "Natural",
    "Partitioner",
    "PowerLaw",
    "Shards",
    "format_report",
    "partition_report",
    "plot_partition",
]
