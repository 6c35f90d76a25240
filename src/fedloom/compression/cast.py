"""Casts: float32 values written as float32, float16 or bfloat16.

``f32`` is exact. ``fp16`` and ``bf16`` are exact for values the narrower type represents and
round to nearest otherwise: lossy beyond their precision. Round-to-nearest bounds the error
by half a unit in the last place,

* fp16: ``|decoded - x| <= 2**-11 * |x|`` for ``2**-14 <= |x| <= 65504`` (normal numbers),
  ``<= 2**-25`` below (subnormals); larger values do not fit and are refused on encode;
* bf16: ``|decoded - x| <= 2**-8 * |x|`` over float32's normal range (same exponent range).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .checks import fields
from .codec import ValueCodec
from .encoded import Encoded

# the relative bounds stated above, as tests and users need them
RELATIVE_BOUND = {"f32": 0.0, "fp16": 2.0**-11, "bf16": 2.0**-8}


class Cast(ValueCodec):
    """Values as one float type, ``itemsize`` bytes each; the stage header is empty."""

    dtype: ClassVar[torch.dtype]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def spec(self) -> str:
        return self.name

    def encode(self, values: torch.Tensor, generator: torch.Generator) -> Encoded:
        cast = values.to(self.dtype)
        if not bool(torch.isfinite(cast).all()):
            big = float(values.abs().max())
            raise ValueError(f"{self.name}: a value of magnitude {big:.4g} does not fit")
        return Encoded({}, cast.contiguous().view(torch.uint8).numpy().tobytes())

    def check(self, header: object, count: int) -> int:
        fields(header, set(), self.name)
        return count * self.itemsize

    def decode(self, header: dict[str, Any], data: bytes, count: int) -> torch.Tensor:
        if count == 0:  # frombuffer refuses an empty buffer
            return torch.zeros(0, dtype=torch.float32)
        return torch.frombuffer(bytearray(data), dtype=self.dtype).to(torch.float32)


class F32(Cast):
    """Exact: the values as they are (the value stage when a chain names none)."""

    name = "f32"
    usage = "f32"
    lossless = True
    dtype = torch.float32


class Fp16(Cast):
    """Half the bytes; relative error 2**-11, values up to 65504."""

    name = "fp16"
    usage = "fp16"
    dtype = torch.float16


class Bf16(Cast):
    """Half the bytes; relative error 2**-8, float32's whole range."""

    name = "bf16"
    usage = "bf16"
    dtype = torch.bfloat16
