"""IID partitioning: the control condition every non-IID experiment is compared against."""

from __future__ import annotations

import numpy as np

from ...registry import register_partitioner
from .base import Partitioner


@register_partitioner("iid")
class IID(Partitioner):
    """Shuffle the sample ids and cut them into ``num_clients`` near-equal parts.

    This is the IID baseline of McMahan et al. 2017 ("Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS): every client sees the global label
    distribution, so any gap to it measures the cost of heterogeneity. Part sizes differ by at
    most one (``np.array_split``), so no client is starved when ``N`` is not a multiple of
    ``num_clients``.
    """

    name = "iid"

    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        perm = rng.permutation(len(labels))
        return np.array_split(perm, self.num_clients)
