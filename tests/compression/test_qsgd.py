"""Stochastic b-bit quantisation: within one spacing per value, unbiased, densely packed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedloom.compression import Chain, CodecState
from fedloom.compression.bitpack import pack, packed_size, unpack

from .helpers import gen, round_trip


def chunk_steps(x: torch.Tensor, bits: int, chunk: int) -> torch.Tensor:
    """Each value's spacing ``scale / (2**bits - 1)``, scale = its chunk's max - min."""
    n = x.numel()
    pad = torch.cat([x, x[-1:].expand(-n % chunk)]).view(-1, chunk).double()
    scale = pad.amax(1) - pad.amin(1)
    return (scale / (2**bits - 1)).repeat_interleave(chunk)[:n]


def float32_slack(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """What float32 arithmetic may add, per the codec's docstring: 2**-24 (|x| + 8 scale)."""
    return 2.0**-24 * (x.double().abs() + 8 * step * (2**bits - 1))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11, 16])
def test_each_value_is_within_one_spacing(bits: int) -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(bits)) * 3
    y = round_trip([f"qsgd:{bits}:512"], x, seed=bits)
    step = chunk_steps(x, bits, 512)
    bound = step + float32_slack(x, step, bits)
    assert bool(((y.double() - x.double()).abs() <= bound).all())


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13, 16])
def test_the_payload_is_densely_packed(bits: int) -> None:
    n, chunk = 4099, 1024
    enc = Chain.parse([f"qsgd:{bits}"]).encode(torch.randn(n), None, gen(0))
    chunks = math.ceil(n / chunk)
    assert len(enc.payload) == 8 * chunks + math.ceil(n * bits / 8)
    if bits == 8:
        assert len(enc.payload) - 8 * chunks == n  # one byte a value


@pytest.mark.parametrize("bits", range(1, 17))
def test_bit_packing_round_trips_every_code(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=1003)
    codes[:2] = [0, 2**bits - 1]
    data = pack(codes, bits)
    assert len(data) == packed_size(codes.size, bits)
    assert np.array_equal(unpack(data, codes.size, bits), codes)


def test_stochastic_rounding_is_unbiased_over_seeds() -> None:
    """The mean of S decodes converges to x. Each decode lies in an interval one spacing wide,
    so by Hoeffding, P(|mean - x| >= t) <= 2 exp(-2 S t**2 / step**2) per value; with a union
    bound over the n values and failure probability delta, t = step sqrt(ln(2n/delta) / 2S).
    Add the float32 arithmetic's slack (the codec's docstring) to get the tolerance."""
    n, bits, seeds, delta = 1024, 2, 1500, 1e-6
    x = torch.randn(n, generator=torch.Generator().manual_seed(5))
    chain = Chain.parse([f"qsgd:{bits}:256"])
    total = torch.zeros(n, dtype=torch.float64)
    for s in range(seeds):
        total += chain.decode(chain.encode(x, None, gen(s)).to_bytes(), n).double()
    step = chunk_steps(x, bits, 256)
    tol = step * math.sqrt(math.log(2 * n / delta) / (2 * seeds))
    tol += float32_slack(x, step, bits)
    err = (total / seeds - x.double()).abs()
    assert bool((err <= tol).all()), float((err / tol).max())
    # the tolerance is tight enough to catch a biased rounding: always rounding down
    lo = _chunk_lo(x, 256)
    down = lo + torch.floor((x.double() - lo) / step) * step
    assert float(((down - x.double()).abs() > tol).double().mean()) > 0.5


def _chunk_lo(x: torch.Tensor, chunk: int) -> torch.Tensor:
    n = x.numel()
    pad = torch.cat([x, x[-1:].expand(-n % chunk)]).view(-1, chunk).double()
    return pad.amin(1).repeat_interleave(chunk)[:n]


def test_constant_chunks_are_exact() -> None:
    x = torch.full((3000,), -1.25)
    x[2048:] = 7.0
    assert torch.equal(round_trip(["q1"], x), x)


def test_same_seed_same_bytes_and_another_seed_other_bytes() -> None:
    x = torch.randn(10_000)
    chain = Chain.parse(["q4", "zstd"])
    a = chain.encode(x, CodecState(), gen(3, round=2, client=7)).to_bytes()
    b = chain.encode(x, CodecState(), gen(3, round=2, client=7)).to_bytes()
    c = chain.encode(x, CodecState(), gen(3, round=2, client=8)).to_bytes()
    assert a == b and a != c


@pytest.mark.parametrize("item", ["q0", "q17", "qsgd:8:0", "qsgd", "qsgd:8:1:2", "qsgd:x"])
def test_bad_quantiser_items_are_refused_by_name(item: str) -> None:
    with pytest.raises(ValueError, match=f"item 0 '{item}'.*valid items: f32"):
        Chain.parse([item])
