"""zstd (the ``zstandard`` library) as the last, lossless stage over the chain's bytes.

Decompression is bounded before it starts: the frame must declare its content size and it
must equal the size the receiver computed from the other stages' headers (a frame's declared
size, not ``max_output_size``, is what zstandard allocates); the frame must end the payload
(no trailing bytes), and its checksum must match.
"""

from __future__ import annotations

import zstandard

from ..errors import WireError
from .checks import equal, fields
from .codec import ByteCodec
from .encoded import Encoded

DEFAULT_LEVEL = 3


class Zstd(ByteCodec):
    """``zstd[:<level 1..22>]``."""

    name = "zstd"
    usage = "zstd[:<level 1..22>]"

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {level}")
        self.level = level

    def spec(self) -> str:
        return "zstd" if self.level == DEFAULT_LEVEL else f"zstd:{self.level}"

    def compress(self, data: bytes) -> Encoded:
        z = zstandard.ZstdCompressor(level=self.level, write_content_size=True, write_checksum=True)
        return Encoded({"size": len(data)}, z.compress(data))

    def check(self, header: object, size: int) -> None:
        h = fields(header, {"size"}, self.spec())
        equal(h, "size", size, self.spec())

    def decompress(self, data: bytes, size: int) -> bytes:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise WireError(f"zstd: not a zstd frame ({e})") from None
        if declared != size:
            raise WireError(f"zstd: frame declares {declared} bytes, the header implies {size}")
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out = d.decompress(data)
        except zstandard.ZstdError as e:
            raise WireError(f"zstd: corrupt frame ({e})") from None
        if not d.eof or d.unused_data or len(out) != size:
            raise WireError(f"zstd: incomplete frame or trailing bytes ({len(out)} of {size})")
        return out
