"""The fast paths of SecAgg+ give the values of the plain expressions they replace.

``prg.add_mask`` (the keystream added a piece at a time through per-thread buffers) against
adding the whole ``prg.mask``; ``quantize`` (in cached pieces) against the whole-array
expression, on lengths around the piece size (masks from several threads at once);
``shamir.combine`` (one modular inverse) against Lagrange term by term.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.privacy.secagg import SecAggConfig, prg, shamir
from fedloom.privacy.secagg.quantize import CHUNK, quantize

LENGTHS = [1, 3, 17, prg.CHUNK_VALUES - 1, prg.CHUNK_VALUES, prg.CHUNK_VALUES + 5, 200_003]


def reference_quantize(
    values: NDArray[np.floating], config: SecAggConfig, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """Clip, scale, stochastic rounding: the whole-array expression."""
    c = config.clipping_range
    scaled = (np.clip(values.astype(np.float64), -c, c) + c) / config.step
    floor = np.floor(scaled)
    up = rng.random(scaled.shape) < (scaled - floor)
    levels: NDArray[np.uint32] = np.minimum(floor + up, config.quantization_range - 1).astype(
        np.uint32
    )
    return levels


@pytest.mark.parametrize("d", LENGTHS)
def test_add_mask_adds_and_subtracts_the_whole_mask(d: int) -> None:
    rng = np.random.default_rng(d)
    key = rng.bytes(32)
    start = rng.integers(0, 2**32, d, dtype=np.uint32)
    added, subtracted = start.copy(), start.copy()
    prg.add_mask(added, key)
    prg.add_mask(subtracted, key, subtract=True)
    whole = prg.mask(key, d)
    assert np.array_equal(added, start + whole)
    assert np.array_equal(subtracted, start - whole)
    assert not np.array_equal(added, start)


def test_add_mask_from_many_threads_at_once_is_the_same() -> None:
    keys = [bytes([i]) * 32 for i in range(8)]
    d = 3 * prg.CHUNK_VALUES + 11
    got: dict[int, NDArray[np.uint32]] = {}

    def work(i: int) -> None:
        v = np.zeros(d, np.uint32)
        for _ in range(3):
            prg.add_mask(v, keys[i])
        got[i] = v

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, key in enumerate(keys):
        assert np.array_equal(got[i], np.uint32(3) * prg.mask(key, d))


def test_add_mask_refuses_what_it_cannot_add_into_in_place() -> None:
    key = bytes(32)
    bad_vectors: list[NDArray[Any]] = [
        np.zeros(8, np.int64), np.zeros((2, 4), np.uint32), np.zeros(16, np.uint32)[::2]
    ]
    for bad in bad_vectors:
        with pytest.raises(ValueError, match="contiguous 1-D uint32"):
            prg.add_mask(bad, key)
    with pytest.raises(ValueError, match="32 bytes"):
        prg.add_mask(np.zeros(8, np.uint32), bytes(16))


@pytest.mark.parametrize(
    ("levels", "clip"), [(2**16, 0.1), (2, 1.0), (3, 0.5), (2**20, 1e-3), (1000, 7.0)]
)
def test_quantize_equals_the_whole_array_expression(levels: int, clip: float) -> None:
    cfg = SecAggConfig(4, 10, 3, 2, clipping_range=clip, quantization_range=levels)
    g = np.random.default_rng(levels)
    inputs: list[NDArray[np.floating]] = [
        g.normal(0, clip, CHUNK * 2 + 7),
        g.normal(0, clip, (300, 7)).astype(np.float32),
        g.uniform(-2 * clip, 2 * clip, CHUNK - 1).astype(np.float16),
        np.array([-clip, clip, 0.0, -0.0, 1e30, -1e30]),
        np.linspace(-clip, clip, CHUNK + 1),
        np.zeros(0),
        g.normal(0, clip, (40, 5000))[:, ::3],  # not contiguous
    ]
    for x in inputs:
        want = reference_quantize(x, cfg, np.random.default_rng(7))
        got = quantize(x, cfg, np.random.default_rng(7))
        assert got.dtype == np.uint32 and got.shape == want.shape
        assert np.array_equal(got, want), x.shape


def reference_combine(shares: dict[int, bytes], threshold: int) -> int:
    """Lagrange interpolation at 0 term by term: a modular inverse per term."""
    p = shamir.PRIME
    points = [(x, shamir.share_value(shares[x])) for x in sorted(shares)[:threshold]]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num, den = num * -xj % p, den * (xi - xj) % p
        secret = (secret + yi * num * pow(den, -1, p)) % p
    return secret


def test_combine_with_one_inverse_equals_lagrange_term_by_term() -> None:
    r = random.Random(0)
    for _ in range(200):
        t = r.randint(1, 20)
        xs = r.sample(range(1, 2000), r.randint(t, 30))
        secret = r.randbytes(32)
        shares = shamir.split(secret, xs, t, r.randbytes(shamir.randomness_needed(t)))
        assert shamir.combine(shares, t) == secret
        assert reference_combine(shares, t) == int.from_bytes(secret, "big")
        # arbitrary field values: the same element, refused when it is no 32-byte secret
        noise = {x: r.randrange(shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big") for x in xs}
        want = reference_combine(noise, t)
        if want < 2**256:
            assert int.from_bytes(shamir.combine(noise, t), "big") == want
        else:
            with pytest.raises(ValueError, match="inconsistent"):
                shamir.combine(noise, t)
