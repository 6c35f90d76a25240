"""Pathological non-IID shards, the label-skew benchmark of the FedAvg paper."""

from __future__ import annotations

import numpy as np

from ...registry import register_partitioner
from .base import Partitioner


@register_partitioner("shards")
class Shards(Partitioner):
    """Sort by label, cut into shards, deal ``shards_per_client`` shards to each client.

    Reproduces the "pathological non-IID" split of McMahan et al. 2017 ("Communication-
    Efficient Learning of Deep Networks from Decentralized Data", AISTATS, Sec. 3): MNIST
    sorted by digit, divided into 200 shards of 300, two shards per client, so most clients
    hold only two digits. It is the standard stress test for client drift.

    Details chosen so that the split is reproducible and always exact:

    * ties between equal labels are broken by a seeded random permutation (then a stable sort
      by label), so which samples of a class land in which shard depends on the seed, not on
      the dataset's storage order;
    * the label-sorted ids are cut with ``np.array_split`` into
      ``num_clients * shards_per_client`` contiguous shards, so every sample is covered even
      when ``N`` is not a multiple of the shard count (sizes then differ by one);
    * shards are dealt by a seeded permutation of the shard indices.

    With 60000 samples and 100 clients this is exactly the paper's 200 shards of 300.
    """

    name = "shards"

    def __init__(self, num_clients: int, shards_per_client: int = 2):
        super().__init__(num_clients)
        if (
            isinstance(shards_per_client, bool)
            or not isinstance(shards_per_client, int)
            or shards_per_client < 1
        ):
            raise ValueError(f"shards_per_client must be an int >= 1, got {shards_per_client!r}")
        self.shards_per_client = shards_per_client

    def split(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(labels)
        num_shards = self.num_clients * self.shards_per_client
        if num_shards > n:
            raise ValueError(
                f"Shards: num_clients * shards_per_client = {num_shards} shards but only {n} "
                "samples; lower shards_per_client or num_clients"
            )
        perm = rng.permutation(n)
        order = perm[np.argsort(labels[perm], kind="stable")]
        shards = np.array_split(order, num_shards)
        dealt = rng.permutation(num_shards).reshape(self.num_clients, self.shards_per_client)
        return [np.concatenate([shards[s] for s in row]) for row in dealt]
