"""Fixed-point encoding of float updates into Z_modulus, and back for a sum.

A value clipped to ``[-c, c]`` maps to ``[0, L - 1]`` and rounds up with probability equal
to its fractional part (unbiased stochastic rounding), so each coordinate of each client is
off by less than one step ``2c / (L - 1)``; a sum of m clients, by less than ``m`` steps.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .config import SecAggConfig


def quantize(
    values: NDArray[np.floating], config: SecAggConfig, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """Clip, scale to ``[0, L - 1]`` and stochastically round ``values``."""
    c = config.clipping_range
    scaled = (np.clip(values.astype(np.float64), -c, c) + c) / config.step
    floor = np.floor(scaled)
    up = rng.random(scaled.shape) < (scaled - floor)
    levels = np.minimum(floor + up, config.quantization_range - 1)
    quantized: NDArray[np.uint32] = levels.astype(np.uint32)
    return quantized


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
