"""Stochastic uniform quantisation to ``bits`` bits with per-chunk scales (QSGD).

After Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding" (NeurIPS 2017). Each chunk of ``chunk`` values keeps its minimum ``lo`` and range
``scale`` (float32, 8 bytes a chunk); a value becomes one of the ``L + 1 = 2**bits`` levels
``lo + j * scale / L``, rounded up with probability equal to its distance from the level below
over the spacing. So the decoded value is unbiased, ``E[decode(encode(x))] = x`` (up to the
float32 arithmetic), each value is off by less than one spacing, ``scale / L``, and the
variance is at most ``(scale / L)**2 / 4``. The arithmetic is float32 (one pass over a 1M
vector in a few ms), which adds at most a few float32 roundings, ``~2**-24 (|x| + 8 scale)``,
to the error and to the bias. The rounding draws come from the generator the
caller seeds per (run, round, client), so the same seed gives the same bytes.

``q8`` is 1 byte a value plus 8 bytes per 1024-value chunk: 3.97x smaller than float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import WireError
from .bitpack import MAX_BITS, pack, packed_size, unpack
from .checks import equal, fields
from .codec import ValueCodec
from .encoded import Encoded

DEFAULT_CHUNK = 1024
MAX_CHUNK = 1 << 24
FLOAT32_MAX = float(np.finfo(np.float32).max)


class QSGD(ValueCodec):
    """``qsgd:<bits>[:<chunk>]`` or ``q<bits>``; bits 1..16."""

    name = "qsgd"
    usage = "qsgd:<bits 1..16>[:<chunk>] | q<bits>"

    def __init__(self, bits: int, chunk: int = DEFAULT_CHUNK) -> None:
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
        if not 1 <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be in 1..{MAX_CHUNK}, got {chunk}")
        self.bits, self.chunk = bits, chunk
        self.levels = (1 << bits) - 1

    def spec(self) -> str:
        return f"qsgd:{self.bits}" + ("" if self.chunk == DEFAULT_CHUNK else f":{self.chunk}")

    def chunks(self, count: int) -> int:
        return -(-count // self.chunk)

    def encode(self, values: torch.Tensor, generator: torch.Generator) -> Encoded:
        n, m = values.numel(), self.chunks(values.numel())
        header = {"bits": self.bits, "chunk": self.chunk}
        if n == 0:
            return Encoded(header, b"")
        pad = m * self.chunk - n
        grid = (torch.cat([values, values[-1:].expand(pad)]) if pad else values).reshape(m, -1)
        lo = grid.amin(dim=1)
        scale = _range_up(grid.amax(dim=1).double() - lo.double())
        if float((lo.double() + scale.double()).abs().max()) > FLOAT32_MAX:
            raise ValueError("qsgd: a chunk's range exceeds float32")
        inv = torch.where(scale > 0, self.levels / scale, torch.zeros_like(scale))
        u = (grid - lo[:, None]).mul_(inv[:, None])  # position on the grid, in levels
        u.add_(torch.rand(m, self.chunk, generator=generator))
        codes = u.floor_().clamp_(0, self.levels).view(-1)[:n]
        code_type = torch.uint8 if self.bits <= 8 else torch.int32
        packed = pack(codes.to(code_type).numpy(), self.bits)
        return Encoded(header, lo.numpy().tobytes() + scale.numpy().tobytes() + packed)

    def check(self, header: object, count: int) -> int:
        h = fields(header, {"bits", "chunk"}, self.spec())
        equal(h, "bits", self.bits, self.spec())
        equal(h, "chunk", self.chunk, self.spec())
        return 8 * self.chunks(count) + packed_size(count, self.bits)

    def decode(self, header: dict[str, Any], data: bytes, count: int) -> torch.Tensor:
        m = self.chunks(count)
        if m == 0:
            return torch.zeros(0, dtype=torch.float32)
        lo = np.frombuffer(data, dtype="<f4", count=m)
        scale = np.frombuffer(data, dtype="<f4", count=m, offset=4 * m)
        if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale >= 0).all()):
            raise WireError(f"{self.spec()}: chunk scales must be finite and >= 0")
        if (np.abs(lo.astype(np.float64) + scale) > FLOAT32_MAX).any():
            raise WireError(f"{self.spec()}: a chunk's lo + scale exceeds float32")
        codes = np.zeros(m * self.chunk, dtype=np.float32)
        codes[:count] = unpack(data[8 * m :], count, self.bits)
        out = torch.from_numpy(codes).view(m, -1)
        step = torch.from_numpy(scale / np.float32(self.levels))
        out.mul_(step[:, None]).add_(torch.from_numpy(lo.copy())[:, None])
        return out.view(-1)[:count]


def _range_up(width: torch.Tensor) -> torch.Tensor:
    """``width`` (float64) as float32, rounded up, so ``lo + scale`` covers the chunk's max."""
    down = width.float()
    short = down.double() < width
    return torch.where(short, torch.nextafter(down, torch.tensor(math.inf)), down)
