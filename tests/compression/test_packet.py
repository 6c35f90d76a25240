"""The packet a compressed transfer carries: the model and named tensors, framing checked."""

from __future__ import annotations

import random

import pytest
import torch

from fedloom.compression import CodecState
from fedloom.compression.link import Compression
from fedloom.compression.packet import MAGIC, overhead, pack, unpack
from fedloom.errors import WireError
from fedloom.wire import MAX_EXTRAS


def test_a_packet_round_trips_and_its_framing_is_the_stated_overhead() -> None:
    tensors = {"scaffold_dc": b"\x01\x02", "a": b"", "ifca_0": b"xyz" * 10}
    data = pack(b"model bytes", tensors)
    model, parts = unpack(data)
    assert bytes(model) == b"model bytes"
    assert {n: bytes(v) for n, v in parts.items()} == tensors
    assert list(parts) == sorted(tensors)
    body = len(b"model bytes") + sum(map(len, tensors.values()))
    assert len(data) == body + overhead(list(tensors))
    assert overhead([]) == len(pack(b"", {})) == 9


def test_pack_refuses_names_the_receiver_would_refuse() -> None:
    with pytest.raises(ValueError, match="at most"):
        pack(b"", {f"t{i}": b"" for i in range(MAX_EXTRAS + 1)})
    with pytest.raises(ValueError, match="tensor names"):
        pack(b"", {"a b": b""})


@pytest.mark.parametrize(
    "data,why",
    [
        (b"", "shorter than its prefix"),
        (b"FLZ1" + bytes(5), "magic"),
        (MAGIC + bytes([MAX_EXTRAS + 1]) + bytes(4), "at most"),
        (MAGIC + bytes([0]) + (5).to_bytes(4, "little") + b"abc", "runs past its end"),
        (MAGIC + bytes([0]) + bytes(4) + b"!", "trailing"),
        (MAGIC + bytes([1]) + bytes(4) + bytes([0]) + bytes(4), "name"),
        (MAGIC + bytes([1]) + bytes(4) + bytes([2]) + "é".encode() + bytes(4), "name"),
        (MAGIC + bytes([2]) + bytes(4) + (b"\x01b" + bytes(4)) * 2, "repeated or out of order"),
        (MAGIC + bytes([1]) + bytes(4) + b"\x01b" + (9).to_bytes(4, "little"), "runs past"),
    ],
)
def test_bad_framing_is_a_wire_error_naming_it(data: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        unpack(data)


def test_mutated_packets_are_refused_or_decode_to_finite_values() -> None:
    """Truncations, extensions and bit flips of a real update's packet (with a SCAFFOLD-like
    extra): the server's decode answers WireError or a finite model of the right size."""
    comp = Compression(("topk:0.2", "q8", "zstd"), (), seed=3)
    base = torch.randn(300, generator=torch.Generator().manual_seed(0))
    trained = base + 0.1 * torch.randn(300, generator=torch.Generator().manual_seed(1))
    good = comp.pack_update(1, 2, trained, base, CodecState(), {"dc": trained - base})
    rng, outcomes = random.Random(13), {"rejected": 0, "valid": 0}
    for _ in range(600):
        data = bytearray(good)
        kind = rng.choice(("flip", "flip", "truncate", "extend"))
        if kind == "flip":
            for _ in range(rng.choice((1, 2, 4))):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del data[rng.randrange(len(data)) :]
        else:
            data += rng.randbytes(rng.randrange(1, 40))
        try:
            model, extras = comp.unpack_update(bytes(data), base)
        except WireError:
            outcomes["rejected"] += 1
            continue
        outcomes["valid"] += 1
        assert model.shape == (300,) and torch.isfinite(model).all()
        assert all(t.shape == (300,) and torch.isfinite(t).all() for t in extras.values())
    assert outcomes["rejected"] > 300
