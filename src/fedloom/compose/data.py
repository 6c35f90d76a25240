"""``[data]``: the dataset a registered loader gives, split by a registered partitioner.

Only the config's keys that a loader or partitioner takes are passed (a loader without a
``root`` is never handed one), so a new dataset or partitioner registers itself and needs no
change here.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..config import Config
from ..data.base import TensorDataset
from ..errors import ConfigError
from ..registry import DATASETS, PARTITIONERS
from ..seeding import derive_seed


def load_dataset(cfg: Config) -> TensorDataset:
    """Call the registered loader with the config's root/download/seed where it takes them."""
    loader = DATASETS.get(cfg.data.dataset)
    offered: dict[str, Any] = {
        "root": cfg.data.root,
        "download": cfg.data.download,
        "seed": cfg.seed,
    }
    if cfg.data.partition == "natural":
        offered["num_clients"] = cfg.data.num_clients
    kwargs = accepted(loader, offered, drop_none=True)
    dataset: TensorDataset = loader(**kwargs, **cfg.data.options)
    return dataset


def partition(cfg: Config, dataset: TensorDataset) -> list[np.ndarray]:
    """Split the training set as the config says, seeded from the run seed."""
    d = cfg.data
    if d.partition == "natural":
        if dataset.natural_partition is None:
            raise ConfigError(
                f"data.partition: dataset {d.dataset!r} has no natural partition; "
                f"choose one of {[p for p in PARTITIONERS.names() if p != 'natural']}"
            )
        return [np.asarray(p) for p in dataset.natural_partition]
    cls = PARTITIONERS.get(d.partition)
    offered = {
        "num_clients": d.num_clients,
        "alpha": d.alpha,
        "shards_per_client": d.shards_per_client,
        "exponent": d.exponent,
        "min_samples": d.min_samples,
    }
    try:
        partitioner = cls(**accepted(cls, offered))
        parts: list[np.ndarray] = partitioner(
            dataset.train_y.numpy(), derive_seed(cfg.seed, "partition")
        )
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    return parts


def accepted(fn: Any, offered: dict[str, Any], drop_none: bool = False) -> dict[str, Any]:
    """The ``offered`` keyword arguments that ``fn`` takes (and, with ``drop_none``, not None)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in offered.items() if k in params and not (drop_none and v is None)}
