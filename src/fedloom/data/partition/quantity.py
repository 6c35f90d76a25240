"""Power-law quantity skew: IID labels, very unequal client sizes."""

from __future__ import annotations

import math

import numpy as np

from ...registry import register_partitioner
from .base import Partitioner


@register_partitioner("powerlaw")
class PowerLaw(Partitioner):
    """Client sizes follow a Pareto (power-law) distribution; samples are assigned IID.

    Real federations are dominated by a few large clients and a long tail of small ones
    (LEAF, Caldas et al. 2018, arXiv:1812.01097; the FedProx experiments of Li et al. 2020,
    "Federated Optimization in Heterogeneous Networks", where "the number of samples on each
    device follows a power law"). This partitioner isolates that quantity skew from label skew.

    Sizes: each client gets ``min_samples`` and the remaining ``N - K * min_samples`` samples
    are apportioned in proportion to weights ``w_k ~ Pareto(exponent)`` with scale 1, i.e.
    ``P(w > x) = x ** -exponent`` for ``x >= 1`` (``rng.pareto(exponent) + 1``). A smaller
    ``exponent`` means a heavier tail: below 1 the mean is infinite and one client can take
    most of the data; 1.5 (the default) gives a few clients several times the median.
    Apportionment uses the largest-remainder method, so sizes sum exactly to ``N``. The ids
    are a random permutation cut at the cumulative sizes, so each client's labels follow the
    global distribution.
    """

    name = "powerlaw"

    def __init__(self, num_clients: int, exponent: float = 1.5, min_samples: int = 1):
        super().__init__(num_clients)
        if (
            isinstance(exponent, bool)
            or not isinstance(exponent, (int, float))
            or not math.isfinite(exponent)
            or exponent <= 0
        ):
            raise ValueError(f"exponent must be a finite number > 0, got {exponent!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an int >= 1, got {min_samples!r}")
        self.exponent = float(exponent)
        self.min_samples = min_samples

    def sizes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Client sizes for ``n`` samples: each ``>= min_samples``, summing to ``n``."""
        k = self.num_clients
        spare = n - k * self.min_samples
        if spare < 0:
            raise ValueError(
                f"PowerLaw: {k} clients x min_samples={self.min_samples} needs "
                f"{k * self.min_samples} samples but only {n} are available"
            )
        weights = rng.pareto(self.exponent, size=k) + 1.0
        raw = spare * (weights / weights.sum())
        extra = np.floor(raw).astype(np.int64)
        short = spare - int(extra.sum())
        if short > 0:  # largest remainder first; ties by client index
            extra[np.argsort(-(raw - extra), kind="stable")[:short]] += 1
        counts: np.ndarray = extra + self.min_samples
        return counts

    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        sizes = self.sizes(len(labels), rng)
        perm = rng.permutation(len(labels))
        return np.split(perm, np.cumsum(sizes)[:-1])
