"""The partitioner protocol: split sample ids among clients, seeded, each sample exactly once."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.typing import ArrayLike


class Partitioner(ABC):
    """Splits the training set among ``num_clients`` clients.

    A partitioner is a small object holding its hyper-parameters (checked in ``__init__``
    with a clear ``ValueError``). Calling it with the labels and a numpy ``Generator`` returns
    one sorted int64 index array per client; together they cover every sample exactly once.
    The same generator state always gives the same split.
    """

    name: str = ""

    def __init__(self, num_clients: int):
        if not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
        self.num_clients = num_clients

    @abstractmethod
    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Return ``num_clients`` sorted int64 arrays of sample ids."""

    def __call__(self, labels: ArrayLike, rng: np.random.Generator | int) -> list[np.ndarray]:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if self.num_clients > len(labels):
            raise ValueError(
                f"{type(self).__name__}: {self.num_clients} clients but only {len(labels)} samples"
            )
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        parts = self.split(labels, rng)
        return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
