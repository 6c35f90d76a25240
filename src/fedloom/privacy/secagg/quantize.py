"""Fixed-point encoding of float updates into Z_modulus, and back for a sum.

A value clipped to ``[-c, c]`` maps to ``[0, L - 1]`` and rounds up with probability equal
to its fractional part (unbiased stochastic rounding), so each coordinate of each client is
off by less than one step ``2c / (L - 1)``; a sum of m clients, by less than ``m`` steps.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .config import SecAggConfig

CHUNK = 1 << 16  # values per piece: its few scratch buffers stay in cache


def quantize(
    values: NDArray[np.floating], config: SecAggConfig, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """Clip, scale to ``[0, L - 1]`` and stochastically round ``values``.

    Computed a piece at a time in reused buffers (a piece stays in cache; no fresh pages
    per step), with the same float64 operations in the same order and the same draws (the
    generator's stream continues across pieces), so the levels are those of the plain
    whole-array expression ``min(floor(s) + (u < s - floor(s)), L - 1)``."""
    c, step = config.clipping_range, config.step
    top = np.uint32(config.quantization_range - 1)
    flat = np.ravel(values)
    out = np.empty(flat.shape, dtype=np.uint32)
    size = max(1, min(CHUNK, flat.size))
    scaled, draws, up = np.empty(size), np.empty(size), np.empty(size, dtype=bool)
    for start in range(0, flat.size, size):
        n = min(size, flat.size - start)
        s, u, b, levels = scaled[:n], draws[:n], up[:n], out[start : start + n]
        np.copyto(s, flat[start : start + n], casting="unsafe")  # as astype(float64)
        np.clip(s, -c, c, out=s)
        s += c
        s /= step  # now in [0, L - 1] (up to rounding): its floor is its truncation
        np.copyto(levels, s, casting="unsafe")
        s -= levels  # the fractional part, exactly
        rng.random(out=u)
        np.less(u, s, out=b)
        levels += b
        np.minimum(levels, top, out=levels)
    return out.reshape(np.shape(values))


def dequantize(total: NDArray[np.uint32], count: int, config: SecAggConfig) -> NDArray[np.float64]:
    """The float sum of ``count`` clients' values from the sum of their quantised values."""
    return total.astype(np.float64) * config.step - count * config.clipping_range


def decode_centred(
    total: NDArray[np.uint32], count: int, config: SecAggConfig
) -> NDArray[np.float64]:
    """The float sum of ``count`` clients from a quantised sum that may hold signed noise.

    The integer sum is taken as the representative of ``total`` mod the modulus nearest to
    the centre ``count * (L - 1) / 2``: right whenever the sum lies within half a modulus of
    it (always without noise, as the modulus exceeds ``count * (L - 1)``; with noise, when
    the modulus was sized for it)."""
    m = config.modulus
    centre = count * (config.quantization_range - 1) // 2
    shifted = np.mod(total.astype(np.int64) - centre, m)
    signed = np.where(shifted >= m // 2, shifted - m, shifted) + centre
    decoded: NDArray[np.float64] = signed.astype(np.float64) * config.step
    return decoded - count * config.clipping_range
