"""One run seed drives everything: derived seeds per purpose, round and client.

Every random draw in a run (initial model, client sampling, each client's shuffling and
dropout) uses a seed derived from ``(run seed, purpose, round, client)``. A client's training
is therefore the same whichever process trains it and in whatever order, which is what makes
resume, multi-process and distributed runs give bit-identical results.
"""

from __future__ import annotations

import zlib

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for ``purpose`` (e.g. "sample", "client") and integer keys."""
    h = _mix((seed & _MASK) ^ zlib.crc32(purpose.encode()))
    for k in keys:
        h = _mix(h ^ (k & _MASK))
    return h >> 1


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator (and CUDA's once it is initialised).

    ``torch.manual_seed`` also queues lazy seeding of every uninitialised accelerator backend,
    which formats a stack trace each call (~0.5 ms): too much to pay once per client.
    """
    import torch

    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
