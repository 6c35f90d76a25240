"""Datasets (as tensors) and partitioners. Importing this registers the built-in datasets."""

from .base import TensorDataset
from .download import download, ensure_files
from .embedded import load_mnist5k
from .femnist import load_femnist
from .mnist import load_fashion_mnist, load_mnist
from .partition import (
    IID,
    Dirichlet,
    Natural,
    Partitioner,
    PowerLaw,
    Shards,
    format_report,
    partition_report,
    plot_partition,
)
from .synthetic import load_synthetic

__all__ = [
    "IID",
    "Dirichlet",
    "Natural",
    "Partitioner",
    "PowerLaw",
    "Shards",
    "TensorDataset",
    "download",
    "ensure_files",
    "format_report",
    "load_fashion_mnist",
    "load_femnist",
    "load_mnist",
    "load_mnist5k",
    "load_synthetic",
    "partition_report",
    "plot_partition",
]
