"""The lossless stages and the casts: bit-exact where they claim it, within the stated bound
where they round."""

from __future__ import annotations

import pytest
import torch

from fedloom.compression import RELATIVE_BOUND, Chain, CodecState

from .helpers import gen, round_trip


def values(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    """Normal values over several decades, with exact zeros and a few repeats."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-12, 12, (n,), generator=g))
    x[::97] = 0.0
    x[1::101] = x[0]
    return x


@pytest.mark.parametrize("items", [[], ["f32"], ["zstd"], ["zstd:19"], ["f32", "zstd:1"]])
def test_lossless_chains_are_bit_exact(items: list[str]) -> None:
    x = values()
    y = round_trip(items, x)
    assert torch.equal(y.view(torch.int32), x.view(torch.int32))
    assert Chain.parse(items).lossless


@pytest.mark.parametrize("kind, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_casts_are_exact_for_representable_values(kind: str, dtype: torch.dtype) -> None:
    x = values().to(dtype).float()  # every value now representable
    y = round_trip([kind], x)
    assert torch.equal(y, x)
    assert not Chain.parse([kind]).lossless


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_casts_stay_within_the_stated_relative_bound(kind: str) -> None:
    x = values(seed=1)
    if kind == "fp16":  # the bound holds over fp16's normal range, [2**-14, 65504]
        x = x.clamp(-60_000, 60_000)
        x = torch.where(x.abs() < 2.0**-14, torch.zeros_like(x), x)
    y = round_trip([kind, "zstd"], x)
    err = (y.double() - x.double()).abs()
    assert bool((err <= RELATIVE_BOUND[kind] * x.double().abs()).all())
    assert float(err.max()) > 0  # rounding did happen: the bound was tested, not skipped


def test_fp16_subnormals_have_the_absolute_bound() -> None:
    x = torch.linspace(-(2.0**-14), 2.0**-14, 5001)
    err = (round_trip(["fp16"], x).double() - x.double()).abs()
    assert float(err.max()) <= 2.0**-25


def test_a_value_out_of_fp16_range_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Chain.parse(["fp16"]).encode(torch.tensor([1.0, 7e4]), None, gen(0))
    y = round_trip(["bf16"], torch.tensor([1.0, 7e4]))  # bf16 has float32's range
    assert float(y[1]) == pytest.approx(7e4, rel=2.0**-8)


@pytest.mark.parametrize("items", [["fp16"], ["q8"], ["topk:0.5", "zstd"], ["zstd"]])
def test_non_finite_or_wrongly_typed_updates_are_refused_on_encode(items: list[str]) -> None:
    chain = Chain.parse(items)
    for bad in (torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")])):
        with pytest.raises(ValueError, match="NaN or infinite"):
            chain.encode(bad, CodecState(), gen(0))
    for bad in (torch.ones(3, dtype=torch.float64), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="1-D float32"):
            chain.encode(bad, CodecState(), gen(0))


@pytest.mark.parametrize("items", [[], ["fp16"], ["q8"], ["topk:0.1", "q4", "zstd"], ["randk:0.1"]])
def test_an_empty_and_a_one_value_vector_round_trip(items: list[str]) -> None:
    for x in (torch.zeros(0), torch.tensor([0.75])):
        y = round_trip(items, x)
        assert y.shape == x.shape and torch.allclose(y, x)


@pytest.mark.parametrize("items", [["q8"], ["fp16"], ["topk:0.1", "q4"], ["randk:0.2"]])
def test_a_strided_view_encodes_as_its_values(items: list[str]) -> None:
    base = torch.randn(4000)
    view, copy = base[::2], base[::2].clone()
    chain = Chain.parse(items)
    a = chain.encode(view, CodecState(), gen(0)).to_bytes()
    assert a == chain.encode(copy, CodecState(), gen(0)).to_bytes()
