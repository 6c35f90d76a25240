"""Pack unsigned codes of ``bits`` bits each (1..16) densely, little-endian bit order.

``bits = 8`` is one byte per value, ``bits = 4`` two values per byte, ``bits = 3`` eight
values in three bytes. The padding bits of the last byte are zero, and :func:`unpack` checks
that, so one update has exactly one encoding.
"""

from __future__ import annotations

import numpy as np

from ..errors import WireError

MAX_BITS = 16


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> bytes:
    """``codes`` (non-negative, each below ``2**bits``) as ``packed_size`` bytes."""
    if bits == 8:
        return codes.astype("<u1").tobytes()
    if bits == 16:
        return codes.astype("<u2").tobytes()
    if 8 % bits == 0:  # 1, 2, 4: whole codes to a byte, by shifts
        per = 8 // bits
        flat = np.zeros(-(-codes.size // per) * per, dtype=np.uint8)
        flat[: codes.size] = codes
        c = flat.reshape(-1, per)
        out = c[:, 0].copy()
        for j in range(1, per):
            out |= c[:, j] << np.uint8(j * bits)
        return out.tobytes()
    # each code as its 16 bits, keep the low ``bits``, then 8 bits to a byte
    as_bits = np.unpackbits(codes.astype("<u2").view(np.uint8), bitorder="little")
    kept = as_bits.reshape(-1, 16)[:, :bits]
    return np.packbits(kept.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    """``count`` codes (unsigned integers) from ``packed_size(count, bits)`` bytes (the caller
    checked the length)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return buf
    if bits == 16:
        return buf.view("<u2")
    if 8 % bits == 0:
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        all_codes = ((buf[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)
        if all_codes[count:].any():
            raise WireError(f"quantised codes: padding bits after {count} codes are not zero")
        return all_codes[:count]
    as_bits = np.unpackbits(buf, bitorder="little")
    if as_bits[count * bits :].any():
        raise WireError(f"quantised codes: padding bits after {count} codes are not zero")
    per_code = as_bits[: count * bits].reshape(count, bits).astype(np.int64)
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    return per_code @ weights
