"""Random-k sparsification with a seed-shared mask: only the values travel.

The encoder draws a mask seed from the caller's generator and writes it in the header; the
decoder rebuilds the same ``k`` indices from it, so no index bytes travel. The mask is the
``k`` coordinates whose hash ``splitmix64(seed ^ i)`` is smallest: splitmix64 is a bijection
on 64-bit integers, so the keys are distinct and the set is the same on every machine and
with every numpy or torch version (a library's shuffle may change between versions). Error
feedback (in the chain) keeps what was not sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .checks import equal, fields, integer
from .sparse import FractionSparsifier

SEED_MAX = (1 << 63) - 1


class RandK(FractionSparsifier):
    """``randk:<fraction>``: a random ``round(fraction * n)`` coordinates (at least one)."""

    name = "randk"
    usage = "randk:<fraction in (0, 1]>"

    def select(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any], bytes]:
        k = self.count(x.numel())
        seed = int(torch.randint(0, SEED_MAX, (1,), generator=generator).item())
        return mask(seed, x.numel(), k), {"k": k, "seed": seed}, b""

    def check(self, header: object, n: int) -> int:
        h = fields(header, {"k", "seed"}, self.spec())
        equal(h, "k", self.count(n), self.spec())
        integer(h, "seed", 0, SEED_MAX, self.spec())
        return 0

    def indices(self, header: dict[str, Any], data: bytes, n: int) -> torch.Tensor:
        return mask(int(header["seed"]), n, int(header["k"]))


def mask(seed: int, n: int, k: int) -> torch.Tensor:
    """The sorted indices of the ``k`` smallest ``splitmix64(seed ^ i)``, ``i < n``."""
    if k >= n:
        return torch.arange(n, dtype=torch.int64)
    z = np.arange(n, dtype=np.uint64) ^ np.uint64(seed)
    z += np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64, as splitmix64 intends
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    chosen = np.argpartition(z, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.sort(chosen).astype(np.int64))
