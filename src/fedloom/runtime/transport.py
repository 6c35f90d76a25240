"""Chunked model transfer over gRPC streams, with size limits checked as bytes arrive.

A model is sent as a stream of :class:`Chunk` messages; only the first carries the header
fields (client, round, version, samples, metrics, total size). The receiver refuses a stream
that claims or brings more than ``max_bytes`` before buffering it, so a hostile peer cannot
make the aggregator allocate without limit. gRPC's own message cap never applies to a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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


def join_chunks(chunks: Iterable, max_bytes: int) -> tuple[pb.Chunk, bytearray]:
    """Collect a chunk stream into (header chunk, bytes), enforcing ``max_bytes``."""
    it = iter(chunks)
    try:
        head = next(it)
    except StopIteration:
        raise WireError("empty stream: no chunk arrived") from None
    total = head.total_bytes
    if total < 0 or total > max_bytes:
        raise WireError(f"stream announces {total} bytes; the limit is {max_bytes}")
    buf = bytearray(total)
    pos = 0
    for chunk in _with_first(head, it):
        n = len(chunk.data)
        if pos + n > total:
            raise WireError(f"stream brought more than the {total} bytes it announced")
        buf[pos : pos + n] = chunk.data
        pos += n
    if pos != total:
        raise WireError(f"stream ended after {pos} of {total} announced bytes")
    return head, buf


def _with_first(head, rest: Iterator) -> Iterator:
    yield head
    yield from rest
