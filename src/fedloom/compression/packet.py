"""What one transfer carries when a direction is compressed: the model and named tensors.

A packet is the encoded model (an :class:`~.encoded.Encoded`'s bytes) and the strategy's
tensors (SCAFFOLD's control variates, IFCA's cluster models), each encoded by itself, framed
as ``MAGIC | u8 tensor count | u32 model length | model | per tensor: u8 name length | name |
u32 length | bytes``. Tensors go sorted by name. The framing costs
``PREFIX + sum(5 + len(name))`` bytes (:func:`overhead`): 9 without tensors. A packet is
what the network moves inside its chunk stream or bulk body, and what the simulation counts,
so ``bytes_up`` / ``bytes_down`` are the same number in both. What a transport adds around
a packet is not counted: on the bulk port, per message a 4-byte length and its JSON header
(:mod:`fedloom.runtime.bulk`); on gRPC, per Chunk message its protobuf fields (the header
fields on the first, a 1-byte tag and a length varint on each; :mod:`fedloom.runtime.transport`),
and below those gRPC's 5-byte message prefix and HTTP/2 frames.

:func:`unpack` checks the framing before a part is used: the magic, the count against
:data:`~fedloom.wire.MAX_EXTRAS`, every length against what is left, each name (as the wire
format's extra names: ``[A-Za-z0-9_.-]{1,64}``, strictly increasing) and no trailing bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

from ..errors import WireError
from ..wire import MAX_EXTRAS

MAGIC = b"FLP1"
_HEAD = struct.Struct("<4sBI")  # magic, tensor count, model length
_NAME = struct.Struct("<B")
_SIZE = struct.Struct("<I")
PREFIX = _HEAD.size
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def pack(model: bytes, tensors: Mapping[str, bytes]) -> bytes:
    """The packet of an encoded model and encoded tensors (by name)."""
    names = sorted(tensors)
    if len(names) > MAX_EXTRAS or any(not NAME_RE.fullmatch(n) for n in names):
        raise ValueError(f"tensor names {names}: at most {MAX_EXTRAS}, each {NAME_RE.pattern}")
    parts = [_HEAD.pack(MAGIC, len(names), len(model)), model]
    for name in names:
        raw = name.encode()
        parts += [_NAME.pack(len(raw)), raw, _SIZE.pack(len(tensors[name])), tensors[name]]
    return b"".join(parts)


def overhead(names: list[str]) -> int:
    """The framing bytes of a packet with tensors ``names`` (beyond the encoded parts)."""
    return PREFIX + sum(_NAME.size + len(n.encode()) + _SIZE.size for n in names)


def unpack(data: bytes | bytearray | memoryview) -> tuple[memoryview, dict[str, memoryview]]:
    """(the model's encoded bytes, each tensor's by name), views of ``data``; ``WireError``
    naming what is wrong with the framing."""
    view = memoryview(data).cast("B")
    if len(view) < PREFIX:
        raise WireError(f"compressed packet of {len(view)} bytes: shorter than its prefix")
    magic, count, size = _HEAD.unpack(view[:PREFIX])
    if magic != MAGIC:
        raise WireError(f"not a compressed packet: magic {bytes(magic)!r}, want {MAGIC!r}")
    if count > MAX_EXTRAS:
        raise WireError(f"compressed packet names {count} tensors; at most {MAX_EXTRAS}")
    model, pos = _take(view, PREFIX, size, "the model")
    tensors: dict[str, memoryview] = {}
    last = ""
    for i in range(count):
        (n,) = _NAME.unpack(_take(view, pos, _NAME.size, f"tensor {i}'s name length")[0])
        raw, pos = _take(view, pos + _NAME.size, n, f"tensor {i}'s name")
        name = _name(bytes(raw), i)
        if name <= last:
            raise WireError(f"compressed packet: tensor {name!r} repeated or out of order")
        (length,) = _SIZE.unpack(_take(view, pos, _SIZE.size, f"tensor {name!r}'s length")[0])
        tensors[name], pos = _take(view, pos + _SIZE.size, length, f"tensor {name!r}")
        last = name
    if pos != len(view):
        raise WireError(f"compressed packet: {len(view) - pos} trailing bytes")
    return model, tensors


def _take(view: memoryview, pos: int, n: int, what: str) -> tuple[memoryview, int]:
    if n > len(view) - pos:
        raise WireError(f"compressed packet: {what} ({n} bytes) runs past its end")
    return view[pos : pos + n], pos + n


def _name(raw: bytes, i: int) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not NAME_RE.fullmatch(name):
        shown = raw[:70]
        raise WireError(f"compressed packet: tensor {i}'s name {shown!r} is not {NAME_RE.pattern}")
    return name
