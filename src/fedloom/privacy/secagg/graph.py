"""The SecAgg+ neighbour graph: a Harary graph over a shared random ordering of the clients.

Each client shares its secrets only with its ``k - 1`` neighbours (and keeps one share), so
cost grows as O(n log n) instead of O(n^2). The ordering comes from a seed every party knows,
so all agree on the graph without exchanging it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)  # every party of a simulated round asks for the same graph
def neighbours(num_clients: int, num_shares: int, seed: int) -> tuple[frozenset[int], ...]:
    """For each client id, the ids of its neighbours (itself excluded)."""
    n, degree = num_clients, num_shares - 1
    if degree >= n - 1:
        return tuple(frozenset(range(n)) - {i} for i in range(n))
    if degree % 2:
        raise ValueError(f"num_shares={num_shares} must be odd below num_clients={n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    result: list[set[int]] = [set() for _ in range(n)]
    for position, client in enumerate(order):
        for step in range(1, degree // 2 + 1):
            other = order[(position + step) % n]
            result[client].add(other)
            result[other].add(client)
    return tuple(frozenset(s) for s in result)
