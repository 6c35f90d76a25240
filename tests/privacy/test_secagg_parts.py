"""SecAgg+ building blocks: Shamir sharing, the PRG, quantisation, the neighbour graph, config."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.privacy.secagg import SecAggConfig, recommended_num_shares, shamir
from fedloom.privacy.secagg.graph import neighbours
from fedloom.privacy.secagg.prg import derive, keystream, mask
from fedloom.privacy.secagg.quantize import dequantize, quantize


def _randomness(t: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(shamir.randomness_needed(t))


@pytest.mark.parametrize(("n", "t"), [(1, 1), (5, 3), (11, 6), (31, 16)])
def test_shamir_round_trip_from_every_threshold_subset(n: int, t: int) -> None:
    secret = random.Random(n).randbytes(32)
    shares = shamir.split(secret, list(range(1, n + 1)), t, _randomness(t, n))
    subsets = [random.Random(i).sample(sorted(shares), t) for i in range(20)]
    for xs in subsets:
        assert shamir.combine({x: shares[x] for x in xs}, t) == secret


def test_shamir_below_threshold_says_nothing_of_the_secret() -> None:
    """t - 1 shares are consistent with every secret: for any candidate secret s' there is a
    degree-(t-1) polynomial through the t - 1 shares and (0, s'); so the t - 1 shares of two
    different secrets can be identical."""
    t, xs = 4, [1, 2, 3, 4, 5]
    a, b = b"\x01" * 32, b"\x02" * 32
    shares_a = shamir.split(a, xs, t, _randomness(t, 0))
    known = {x: shares_a[x] for x in xs[: t - 1]}
    # the polynomial through the known shares and (0, b) has a t-th point; with it, b comes out
    points = {0: int.from_bytes(b, "big")} | {x: shamir.share_value(v) for x, v in known.items()}
    x4 = xs[t - 1]
    y4 = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num, den = num * (x4 - xj) % shamir.PRIME, den * (xi - xj) % shamir.PRIME
        y4 = (y4 + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    forged = known | {x4: y4.to_bytes(shamir.SHARE_BYTES, "big")}
    assert shamir.combine(forged, t) == b  # same t - 1 shares, other secret
    assert shamir.combine({x: shares_a[x] for x in xs[:t]}, t) == a
    with pytest.raises(ValueError, match="3 shares, 4 needed"):
        shamir.combine(known, t)


def test_shamir_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", [1, 2], 2, _randomness(2, 0))
    with pytest.raises(ValueError, match="distinct and non-zero"):
        shamir.split(bytes(32), [0, 1], 2, _randomness(2, 0))
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(bytes(32), [1, 2], 3, _randomness(3, 0))
    with pytest.raises(ValueError, match="66 bytes"):
        shamir.share_value(b"\x00" * 65)
    with pytest.raises(ValueError, match="outside the field"):
        shamir.share_value(b"\xff" * 66)


def test_prg_is_deterministic_per_key_and_looks_uniform() -> None:
    k1, k2 = derive(b"seed", "a"), derive(b"seed", "b")
    assert k1 != k2 and len(k1) == 32
    m = mask(k1, 100_000)
    assert m.dtype == np.uint32 and m.shape == (100_000,)
    assert np.array_equal(m, mask(k1, 100_000))
    assert not np.array_equal(m, mask(k2, 100_000))
    assert np.array_equal(mask(k1, 10), m[:10])  # a prefix of the same keystream
    # uniform on [0, 2^32): mean 2^31, std 2^32/sqrt(12); the mean of 1e5 is within 6 sigma
    assert abs(m.astype(np.float64).mean() - 2**31) < 6 * 2**32 / np.sqrt(12 * 100_000)
    assert len(keystream(k1, 7)) == 7
    with pytest.raises(ValueError, match="32 bytes"):
        keystream(b"short", 4)


def test_quantisation_is_unbiased_and_off_by_less_than_one_step() -> None:
    cfg = SecAggConfig(num_clients=2, vector_length=1, num_shares=2, reconstruction_threshold=1,
                       clipping_range=1.0, quantization_range=17)  # fmt: skip
    values = np.random.default_rng(0).uniform(-1, 1, 200_000)
    q = quantize(values, cfg, np.random.default_rng(1))
    assert q.dtype == np.uint32 and q.min() >= 0 and q.max() <= 16
    back = dequantize(q, 1, cfg)
    assert np.abs(back - values).max() < cfg.step  # one level is 2/16 = 0.125
    # unbiased: the mean error of 2e5 roundings (each within one step) is near 0 (6 sigma)
    assert abs((back - values).mean()) < 6 * cfg.step / np.sqrt(200_000)
    clipped = dequantize(quantize(np.array([-5.0, 5.0]), cfg, np.random.default_rng(0)), 1, cfg)
    assert clipped.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize(("n", "k"), [(20, 11), (100, 21), (1000, 31), (7, 7)])
def test_neighbour_graph_is_regular_symmetric_and_seeded(n: int, k: int) -> None:
    g = neighbours(n, k, seed=3)
    assert all(len(s) == k - 1 and i not in s for i, s in enumerate(g))
    assert all(i in g[j] for i, s in enumerate(g) for j in s)
    assert g == neighbours(n, k, seed=3)
    if k < n:
        assert g != neighbours(n, k, seed=4)


def test_recommended_shares_grow_as_log_n() -> None:
    assert [recommended_num_shares(n) for n in (2, 5, 20, 100, 1000)] == [2, 5, 15, 21, 31]


def test_config_names_each_problem() -> None:
    with pytest.raises(ConfigError, match="num_shares=10: odd"):
        SecAggConfig(num_clients=20, vector_length=4, num_shares=10, reconstruction_threshold=5)
    with pytest.raises(ConfigError, match="reconstruction_threshold=12"):
        SecAggConfig(num_clients=20, vector_length=4, num_shares=11, reconstruction_threshold=12)
    with pytest.raises(ConfigError, match="does not wrap"):
        SecAggConfig(num_clients=20, vector_length=4, num_shares=11, reconstruction_threshold=6,
                     quantization_range=2**30)  # fmt: skip
    with pytest.raises(ConfigError, match="power of two"):
        SecAggConfig(num_clients=20, vector_length=4, num_shares=11, reconstruction_threshold=6,
                     modulus=3 * 2**20)  # fmt: skip
