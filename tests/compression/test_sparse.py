"""Top-k and random-k: what travels, error feedback, and resuming from a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch

from fedloom.compression import Chain, CodecState
from fedloom.compression.randk import mask

from .helpers import gen


def test_topk_keeps_exactly_the_k_largest_magnitudes() -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    chain = Chain.parse(["topk:0.01"])
    y = chain.decode(chain.encode(x, CodecState(), gen(0)).to_bytes(), x.numel())
    sent = y != 0
    assert int(sent.sum()) == 100
    assert torch.equal(y[sent], x[sent])  # values travel as they are (f32)
    assert float(x[sent].abs().min()) >= float(x[~sent].abs().max())


def test_topk_indices_are_delta_coded_in_two_bytes_at_one_percent() -> None:
    n = 100_000
    enc = Chain.parse(["topk:0.01"]).encode(torch.randn(n), CodecState(), gen(0))
    assert enc.header["stages"][0] == {"k": 1000, "width": 2}
    assert len(enc.payload) == 1000 * (2 + 4)  # a u16 gap and a float32 value per kept index


def run_rounds(
    chain: Chain, xs: list[torch.Tensor], state: CodecState, first: int = 0
) -> list[bytes]:
    return [
        chain.encode(x, state, gen(0, round=first + t, client=3)).to_bytes()
        for t, x in enumerate(xs)
    ]


def updates(rounds: int, n: int = 4000) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=g) * (1 + t % 3) for t in range(rounds)]


@pytest.mark.parametrize("items", [["topk:0.05"], ["topk:0.05", "q4", "zstd"], ["randk:0.1"]])
def test_error_feedback_loses_nothing(items: list[str]) -> None:
    """sum(sent) + residual == sum(inputs), up to the float32 rounding of the two operations
    the chain does per round: ``corrected = x + residual`` and, on sent coordinates,
    ``values - decoded`` (each off by at most half an ulp, 2**-24 of its magnitude)."""
    chain, state = Chain.parse(items), CodecState()
    xs = updates(12)
    sent = torch.zeros(4000, dtype=torch.float64)
    bound = torch.zeros(4000, dtype=torch.float64)
    residual = torch.zeros(4000)
    for t, x in enumerate(xs):
        corrected = x + residual
        got = chain.decode(chain.encode(x, state, gen(0, round=t)).to_bytes(), x.numel())
        sent += got.double()
        residual = state.state_dict()[f"{chain.stages[0].name}.residual"]
        bound += 2.0**-24 * (corrected.double().abs() + (corrected - got).double().abs())
    err = (sent + residual.double() - torch.stack(xs).double().sum(0)).abs()
    assert bool((err <= bound).all())
    assert float(residual.abs().max()) > 0  # something was held back and is accounted for


def test_exact_values_leave_an_exact_zero_residual_where_sent() -> None:
    chain, state = Chain.parse(["topk:0.1"]), CodecState()
    got = chain.decode(chain.encode(torch.randn(1000), state, gen(0)).to_bytes(), 1000)
    residual = state.state_dict()["topk.residual"]
    assert bool((residual[got != 0] == 0).all()) and bool((residual[got == 0] != 0).all())


@pytest.mark.parametrize("items", [["topk:0.05", "q8", "zstd"], ["randk:0.1", "fp16"]])
def test_state_dict_resumes_bit_for_bit(items: list[str]) -> None:
    chain, xs = Chain.parse(items), updates(8)
    whole = run_rounds(chain, xs, CodecState())
    first = CodecState()
    head = run_rounds(chain, xs[:3], first)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # as a checkpoint holds it: plain tensors
    buf.seek(0)
    resumed = CodecState()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    tail = run_rounds(chain, xs[3:], resumed, first=3)
    assert head + tail == whole


def test_a_residual_of_another_size_is_refused() -> None:
    state = CodecState()
    Chain.parse(["topk:0.1"]).encode(torch.randn(10), state, gen(0))
    with pytest.raises(ValueError, match="has 10 values, not 11"):
        Chain.parse(["topk:0.1"]).encode(torch.randn(11), state, gen(0))
    with pytest.raises(ValueError, match="pass a CodecState"):
        Chain.parse(["topk:0.1"]).encode(torch.randn(11), None, gen(0))


def test_randk_sends_only_values_and_the_decoder_rebuilds_the_mask() -> None:
    n = 10_000
    x = torch.randn(n) + 5  # no zeros: a coordinate is nonzero exactly where it was sent
    chain = Chain.parse(["randk:0.05"])
    enc = chain.encode(x, CodecState(), gen(2))
    seed = enc.header["stages"][0]["seed"]
    assert len(enc.payload) == 500 * 4  # no index bytes
    y = chain.decode(enc.to_bytes(), n)
    assert torch.equal(torch.nonzero(y).flatten(), mask(seed, n, 500))
    assert torch.equal(y[y != 0], x[mask(seed, n, 500)])
    other = chain.encode(x, CodecState(), gen(3)).header["stages"][0]["seed"]
    assert other != seed and not torch.equal(mask(other, n, 500), mask(seed, n, 500))


def splitmix64(z: int) -> int:
    """The reference, on Python integers."""
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed, n, k", [(12345, 1000, 8), ((1 << 63) - 1, 3000, 300), (0, 5, 5)])
def test_the_randk_mask_is_a_fixed_function_of_the_seed(seed: int, n: int, k: int) -> None:
    """The mask is the k smallest splitmix64(seed ^ i), not a library shuffle, so every
    machine and version agrees; checked against a plain-Python reference and a pinned value."""
    want = sorted(sorted(range(n), key=lambda i: splitmix64(seed ^ i))[:k])
    assert mask(seed, n, k).tolist() == want
    assert mask(12345, 1000, 8).tolist() == [147, 164, 222, 397, 540, 564, 711, 860]


@pytest.mark.parametrize("item", ["topk:0", "topk:1.5", "topk:nan", "topk", "randk:-0.1"])
def test_bad_sparsifier_items_are_refused_by_name(item: str) -> None:
    with pytest.raises(ValueError, match=f"item 0 '{item}'"):
        Chain.parse([item])
