"""Chunked model transfer over gRPC streams, with size limits checked as bytes arrive.

A model is sent as a stream of :class:`Chunk` messages; only the first carries the header
fields (client, round, version, samples, metrics, total size). The receiver refuses a stream
that claims or brings more than ``max_bytes`` before buffering it, so a hostile peer cannot
make the aggregator allocate without limit. gRPC's own message cap never applies to a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError

from ..errors import WireError
from .proto import fedloom_pb2 as pb

DEFAULT_CHUNK = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message cap
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
]


def iter_chunks(data: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK, **header) -> Iterator:
    """Split ``data`` into Chunk messages; the first carries ``header`` and the total size."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    view = memoryview(data)
    total = len(view)
    first = pb.Chunk(total_bytes=total, **header)
    if total == 0:
        yield first
        return
    for start in range(0, total, chunk_size):
        piece = bytes(view[start : start + chunk_size])
        if start == 0:
            first.data = piece
            yield first
        else:
            yield pb.Chunk(data=piece)


def encode_chunks(data: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK, **header) -> Iterator:
    """The Chunk messages of :func:`iter_chunks`, already serialised, with one copy of the data.

    Protobuf writes fields in number order and ``data`` (9) is last, so a chunk is its header
    fields followed by ``data``'s tag, length and bytes: any protobuf reader parses it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    view = memoryview(data).cast("B")
    total = len(view)
    head = pb.Chunk(total_bytes=total, **header).SerializeToString()
    if total == 0:
        yield head
        return
    for start in range(0, total, chunk_size):
        piece = view[start : start + chunk_size]
        prefix = head if start == 0 else b""
        yield b"".join((prefix, _DATA_TAG, _varint(len(piece)), piece))


def split_chunk(msg: bytes | memoryview) -> tuple[bytes, memoryview]:
    """(header fields, data) of a serialised Chunk, without copying the data."""
    view = memoryview(msg)
    pos, n, data, head = 0, len(view), view[0:0], []
    while pos < n:
        start = pos
        key, pos = _read_varint(view, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:
            _, pos = _read_varint(view, pos)
        elif kind == 2:
            length, pos = _read_varint(view, pos)
            if pos + length > n:
                raise WireError("malformed chunk: a field runs past the message")
            if field == 9:
                data = view[pos : pos + length]
            pos += length
        else:
            raise WireError(f"malformed chunk: field {field} has wire type {kind}")
        if field != 9:
            head.append(view[start:pos])
    return b"".join(head), data


def join_chunks(chunks: Iterable, max_bytes: int) -> tuple[pb.Chunk, bytearray]:
    """Collect a chunk stream into (header chunk, bytes), enforcing ``max_bytes``.

    Items are Chunk messages or their serialised bytes (read without an extra copy).
    """
    it = iter(chunks)
    try:
        first = next(it)
    except StopIteration:
        raise WireError("empty stream: no chunk arrived") from None
    if isinstance(first, bytes | bytearray | memoryview):
        raw_head, first_data = split_chunk(first)
        try:
            head = pb.Chunk.FromString(raw_head)
        except DecodeError as e:
            raise WireError(f"malformed chunk header: {e}") from None
    else:
        head, first_data = first, first.data
    total = head.total_bytes
    if total < 0 or total > max_bytes:
        raise WireError(f"stream announces {total} bytes; the limit is {max_bytes}")
    buf = bytearray(total)
    pos = 0
    for data in _datas(first_data, it):
        n = len(data)
        if pos + n > total:
            raise WireError(f"stream brought more than the {total} bytes it announced")
        buf[pos : pos + n] = data
        pos += n
    if pos != total:
        raise WireError(f"stream ended after {pos} of {total} announced bytes")
    return head, buf


def _datas(first, rest: Iterator) -> Iterator:
    yield first
    for item in rest:
        yield (
            split_chunk(item)[1] if isinstance(item, bytes | bytearray | memoryview) else item.data
        )


_DATA_TAG = bytes([9 << 3 | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise WireError("malformed chunk: truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
