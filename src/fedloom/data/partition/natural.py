"""A fixed, dataset-given split (LEAF writers, Shakespeare speakers) as a partitioner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from ...registry import register_partitioner
from .base import Partitioner


@register_partitioner("natural")
class Natural(Partitioner):
    """Wrap precomputed per-client index arrays so they go through the partitioner protocol.

    Federated benchmarks such as LEAF (Caldas et al. 2018, arXiv:1812.01097) come already
    split by their natural owner (one FEMNIST writer, one Shakespeare role per client).
    Wrapping that split lets the simulation treat it like any synthetic split: it is checked
    to cover every training sample exactly once, parts come back sorted int64, and
    ``num_clients`` is ``len(parts)``. The seed is ignored: the split is the data's own.

    Args:
        parts: one array-like of sample ids per client (numpy arrays, lists, CPU tensors).
    """

    name = "natural"

    def __init__(self, parts: Sequence[ArrayLike]):
        if len(parts) == 0:
            raise ValueError("parts must be a non-empty sequence of index arrays")
        arrays = []
        for i, part in enumerate(parts):
            arr = np.asarray(part)
            if arr.ndim != 1:
                raise ValueError(f"parts[{i}] must be one-dimensional, got shape {arr.shape}")
            if arr.size == 0:
                raise ValueError(f"parts[{i}] is empty; every client needs at least one sample")
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"parts[{i}] must hold integer sample ids, got {arr.dtype}")
            arrays.append(arr.astype(np.int64, copy=False))
        super().__init__(len(arrays))
        self.parts = arrays

    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(labels)
        flat = np.concatenate(self.parts)
        if len(flat) != n:
            raise ValueError(f"Natural: parts hold {len(flat)} ids but there are {n} samples")
        if flat.min() < 0 or flat.max() >= n:
            raise ValueError(
                f"Natural: sample ids must lie in [0, {n}), got [{flat.min()}, {flat.max()}]"
            )
        seen = np.bincount(flat, minlength=n)
        if (seen != 1).any():
            missing = int((seen == 0).sum())
            raise ValueError(
                f"Natural: parts must cover every sample exactly once; {missing} ids missing "
                f"and {int((seen > 1).sum())} repeated"
            )
        return [p.copy() for p in self.parts]

    def __repr__(self) -> str:
        return f"Natural(num_clients={self.num_clients}, samples={sum(map(len, self.parts))})"
