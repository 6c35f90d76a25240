"""The encoded form of one update: a small JSON header and the payload bytes.

What travels is ``MAGIC | u32 header length | header JSON | payload``. The header is plain
JSON (never pickle): the codec chain, the vector length and what each stage needs to read its
part of the payload (counts, widths, a mask seed). :attr:`Encoded.nbytes` is the length of
exactly those bytes, so byte accounting that adds ``nbytes`` counts what a socket carries.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import WireError

MAGIC = b"FLZ1"
MAX_HEADER_BYTES = 1 << 16  # a chain header is a few hundred bytes; this bounds the JSON parse
_PREFIX = struct.Struct("<4sI")


@dataclass(frozen=True)
class Encoded:
    """A header (JSON-able dict) and payload bytes; one stage's part or a whole update."""

    header: dict[str, Any]
    payload: bytes

    def header_bytes(self) -> bytes:
        # sorted keys and no spaces: the same update gives the same bytes on every machine
        text = json.dumps(self.header, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return text.encode()

    def to_bytes(self) -> bytes:
        head = self.header_bytes()
        return _PREFIX.pack(MAGIC, len(head)) + head + self.payload

    @property
    def nbytes(self) -> int:
        """The size on the wire: prefix, header and payload."""
        return _PREFIX.size + len(self.header_bytes()) + len(self.payload)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Encoded:
        """Split checked framing: magic, a bounded header length, strict UTF-8 JSON object."""
        view = memoryview(data)
        if len(view) < _PREFIX.size:
            raise WireError(f"truncated compressed update: {len(view)} bytes, no header")
        magic, hlen = _PREFIX.unpack(view[: _PREFIX.size])
        if magic != MAGIC:
            raise WireError(f"not a compressed update: magic {bytes(magic)!r}, want {MAGIC!r}")
        end = _PREFIX.size + hlen
        if hlen > MAX_HEADER_BYTES or end > len(view):
            raise WireError(f"header length {hlen} does not fit a message of {len(view)} bytes")
        header = parse_header(bytes(view[_PREFIX.size : end]))
        return cls(header, bytes(view[end:]))


def parse_header(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, an object at the top."""
    try:
        header = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError and ints over Python's digit limit
        raise WireError(f"compressed update header is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise WireError("compressed update header is not a JSON object")
    return header


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in header")
    return out
