"""Shared by the codec tests: a seeded generator and one encode/decode round trip."""

from __future__ import annotations

import torch

from fedloom.compression import Chain, CodecState
from fedloom.seeding import derive_seed


def gen(seed: int, round: int = 0, client: int = 0) -> torch.Generator:
    """The generator a client would use: seeded from (run seed, round, client)."""
    return torch.Generator().manual_seed(derive_seed(seed, "compress", round, client))


def round_trip(items: list[str], x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    chain = Chain.parse(items)
    enc = chain.encode(x, CodecState(), gen(seed))
    data = enc.to_bytes()
    assert len(data) == enc.nbytes
    return chain.decode(data, x.numel())
