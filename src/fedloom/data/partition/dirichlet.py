"""Dirichlet label skew with equal client sizes (Hsu, Qi & Brown 2019)."""

from __future__ import annotations

import math

import numpy as np

from ...registry import register_partitioner
from .base import Partitioner


@register_partitioner("dirichlet")
class Dirichlet(Partitioner):
    """Each client's label mix is a Dirichlet draw around the dataset's class prior.

    Follows Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification" (arXiv:1909.06335): client ``k`` draws class
    proportions ``q_k ~ Dir(alpha * p)`` where ``p`` is the class prior of the labels, so
    ``alpha -> inf`` approaches IID and ``alpha -> 0`` gives one class per client. Unlike the
    popular per-class variant (split each class over clients), client sizes here are equal
    (``N // K``, the remainder spread over the first clients), so label skew is measured
    without quantity skew mixed in.

    Sampling is without replacement. When a class a client wants is used up, its ``q_k`` is
    renormalised over the classes still available; if none of ``q_k``'s classes remain, the
    client falls back to the remaining class proportions. Written as a loop over clients of
    multinomial draws capped by availability: each inner iteration either completes the client
    or exhausts a class, so the cost is ``O(K * C)`` draws whatever ``alpha`` is (about 20 ms
    for ``alpha=0.01``, 1000 clients, 60000 MNIST labels), and there is no rejection loop
    that can spin at small ``alpha``. Actual ids are then dealt from per-class shuffled lists
    in one vectorised pass.

    Older numpy versions return NaN rows from ``dirichlet`` at tiny concentrations; such
    rows are replaced by a one-hot vector on a class drawn from ``p`` (the ``alpha -> 0``
    limit of the distribution).
    """

    name = "dirichlet"

    def __init__(self, num_clients: int, alpha: float):
        super().__init__(num_clients)
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
            or alpha <= 0
        ):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        n, k = len(labels), self.num_clients
        _, y, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
        y = y.reshape(-1)
        num_classes = len(class_counts)
        prior = class_counts / n

        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1

        q = self._draw_proportions(prior, rng)
        counts = self._allocate(q, sizes, class_counts.astype(np.int64), rng)

        # Ids grouped by class, shuffled within each class.
        perm = rng.permutation(n)
        by_class = perm[np.argsort(y[perm], kind="stable")]
        # Within each class block, the first counts[0, c] ids go to client 0, and so on:
        # owner[i] is the client of by_class[i].
        owner = np.repeat(np.tile(np.arange(k), num_classes), counts.T.reshape(-1))
        ids = by_class[np.argsort(owner, kind="stable")]
        return np.split(ids, np.cumsum(sizes)[:-1])

    def _draw_proportions(self, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One ``Dir(alpha * prior)`` row per client, with a one-hot fallback for bad rows."""
        concentration = np.maximum(self.alpha * prior, np.finfo(np.float64).tiny)
        q = rng.dirichlet(concentration, size=self.num_clients)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(q).all(axis=1) | ~(q.sum(axis=1) > 0)
        if bad.any():
            q[bad] = 0.0
            q[np.flatnonzero(bad), rng.choice(len(prior), size=int(bad.sum()), p=prior)] = 1.0
        return q

    @staticmethod
    def _allocate(
        q: np.ndarray, sizes: np.ndarray, available: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Per-client class counts (clients x classes), drawn without replacement."""
        counts = np.zeros_like(q, dtype=np.int64)
        for client, need in enumerate(sizes.tolist()):
            row = counts[client]
            while need > 0:
                weights = np.where(available > 0, q[client], 0.0)
                total = weights.sum()
                if not total > 0:  # every class this client wants is used up
                    weights = available.astype(np.float64)
                    total = weights.sum()
                draw = rng.multinomial(need, weights / total)
                take = np.minimum(draw, available)
                row += take
                available -= take
                need -= int(take.sum())
        return counts
