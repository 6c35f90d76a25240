"""Datasets (as tensors), partitioners and their registries: the ``fedloom.data`` namespace.

Importing this registers the built-in datasets and partitioners.
"""

from ..registry import DATASETS, PARTITIONERS, register_dataset, register_partitioner
from .base import TensorDataset
from .cifar import load_cifar10
from .download import download, ensure_files
from .embedded import load_mnist5k
from .femnist import load_femnist
from .imagefolder import load_image_folder
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
    "DATASETS",
    "IID",
    "PARTITIONERS",
    "Dirichlet",
    "Natural",
    "Partitioner",
    "PowerLaw",
    "Shards",
    "TensorDataset",
    "download",
    "ensure_files",
    "format_report",
    "load_cifar10",
    "load_fashion_mnist",
    "load_femnist",
    "load_image_folder",
    "load_mnist",
    "load_mnist5k",
    "load_synthetic",
    "partition_report",
    "plot_partition",
    "register_dataset",
    "register_partitioner",
]
