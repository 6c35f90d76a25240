"""The public parameters of one SecAgg+ round, shared by every party before it starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError


def recommended_num_shares(num_clients: int) -> int:
    """About ``3 log2 n`` shares (self included), odd, at most ``n``.

    Bell et al. (CCS 2020) need ``k = O(log n)`` neighbours for the sum to stay private and
    correct with high probability against a constant fraction of corrupt or dropped clients;
    their concrete tables put k in the tens for n in the thousands. 3 log2 n gives 21 for
    n = 100 and 31 for n = 1000. Odd so that the neighbour graph (degree k - 1) is regular.
    """
    k = 3 * max(1, math.ceil(math.log2(max(num_clients, 2))))
    k += 1 - k % 2
    return min(k, num_clients)


@dataclass(frozen=True)
class SecAggConfig:
    """What every party agrees on.

    ``num_shares`` is the number of shares each client's secrets are split into: one for
    itself and one per neighbour; ``reconstruction_threshold`` of them give a secret back.
    Inputs are clipped to ``[-clipping_range, clipping_range]`` and stochastically rounded to
    ``quantization_range`` levels; sums live in Z_modulus (a power of two up to 2^32), which
    must hold ``num_clients * (quantization_range - 1)`` without wrapping.
    """

    num_clients: int
    vector_length: int
    num_shares: int
    reconstruction_threshold: int
    clipping_range: float = 1.0
    quantization_range: int = 2**16
    modulus: int = 2**32
    round: int = 0
    graph_seed: int = 0

    def __post_init__(self) -> None:
        n, k, t = self.num_clients, self.num_shares, self.reconstruction_threshold
        problems = []
        if n < 2:
            problems.append(f"num_clients={n}: at least 2")
        if self.vector_length < 1:
            problems.append(f"vector_length={self.vector_length}: at least 1")
        if not 2 <= k <= n:
            problems.append(f"num_shares={k}: between 2 and num_clients={n}")
        elif k < n and k % 2 == 0:
            problems.append(f"num_shares={k}: odd (or num_clients), the graph has degree k - 1")
        if not 1 <= t <= k:
            problems.append(f"reconstruction_threshold={t}: between 1 and num_shares={k}")
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            problems.append(f"clipping_range={self.clipping_range}: a positive number")
        if self.quantization_range < 2:
            problems.append(f"quantization_range={self.quantization_range}: at least 2")
        m = self.modulus
        if m < 2 or m > 2**32 or m & (m - 1):
            problems.append(f"modulus={m}: a power of two, at most 2^32")
        elif n * (self.quantization_range - 1) >= m:
            problems.append(
                f"modulus={m}: must exceed num_clients * (quantization_range - 1) = "
                f"{n * (self.quantization_range - 1)} so the sum does not wrap"
            )
        if self.round < 0 or self.round >= 2**63:
            problems.append(f"round={self.round}: in [0, 2^63)")
        if problems:
            raise ConfigError("invalid secure aggregation config: " + "; ".join(problems))

    @property
    def step(self) -> float:
        """The width of one quantisation level."""
        return 2 * self.clipping_range / (self.quantization_range - 1)
