"""How a model moves between aggregator and client, in both directions and on both channels.

:class:`ModelHeader` is what travels beside a model's wire bytes (task, client, token, round,
version, and for an update its sample count and metrics). Both sides use it: the aggregator to
serialise a published model into chunks once, the client to send an update as chunks (gRPC)
or as the bulk channel's JSON header; :func:`join_chunks` receives a chunk stream on either
side. A model is sent as a stream of :class:`Chunk` messages; only the first carries the
header fields and the total size. The receiver refuses a stream that claims or brings more
than ``max_bytes`` before buffering it, so a hostile peer cannot make the aggregator allocate
without limit. gRPC's own message cap never applies to a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from ..errors import WireError
from .proto import fedloom_pb2 as pb

DEFAULT_CHUNK = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message cap
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
]

Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ModelHeader:
    """The fields sent beside a model: one definition for the gRPC chunks and the bulk
    header, so the two channels cannot drift apart."""

    task_id: str
    round: int
    version: int
    client_id: str = ""
    token: str = ""
    num_samples: int = 0
    metrics_json: str = ""

    def fields(self) -> dict[str, Any]:
        """The header as keyword arguments, leaving out what is unset (as protobuf does)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", 0)}

    def chunks(self, data: Bytes, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """``data`` as serialised Chunk messages (see :func:`encode_chunks`)."""
        return encode_chunks(data, chunk_size, **self.fields())

    def bulk(self, op: str, **more: Any) -> dict[str, Any]:
        """The bulk channel's JSON header for ``op`` ("download" or "upload")."""
        return {"op": op, **dataclasses.asdict(self), **more}


class ModelTransport(Protocol):
    """One channel a client moves models on (the bulk port, the gRPC stream).

    Either method answers None when this channel cannot carry the transfer now (the bulk port
    is not offered or failed): the client then uses the next one."""

    name: str

    def download(self, header: ModelHeader, limit: int) -> Bytes | None:
        """The wire bytes of the model ``header`` names, at most ``limit`` of them."""
        ...

    def upload(self, header: ModelHeader, parts: tuple[bytes, memoryview]) -> pb.UploadReply | None:
        """Send an update (its wire bytes in two parts); the aggregator's reply."""
        ...


def iter_chunks(data: Bytes, chunk_size: int = DEFAULT_CHUNK, **header: Any) -> Iterator[pb.Chunk]:
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


def encode_chunks(data: Bytes, chunk_size: int = DEFAULT_CHUNK, **header: Any) -> Iterator[bytes]:
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


def split_chunk(msg: Bytes) -> tuple[bytes, memoryview]:
    """(header fields, data) of a serialised Chunk, without copying the data."""
    view = memoryview(msg)
    pos, n, data = 0, len(view), view[0:0]
    head: list[memoryview] = []
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


def join_chunks(chunks: Iterable[pb.Chunk | Bytes], max_bytes: int) -> tuple[pb.Chunk, bytearray]:
    """Collect a chunk stream into (header chunk, bytes), enforcing ``max_bytes``.

    Items are Chunk messages or their serialised bytes (read without an extra copy).
    """
    it = iter(chunks)
    try:
        first = next(it)
    except StopIteration:
        raise WireError("empty stream: no chunk arrived") from None
    first_data: Bytes
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


def _datas(first: Bytes, rest: Iterator[pb.Chunk | Bytes]) -> Iterator[Bytes]:
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
