"""Raw serialised chunks: byte-identical to protobuf's, parsed without copying the data."""

from __future__ import annotations

import os

import pytest

from fedloom.errors import WireError
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.transport import encode_chunks, iter_chunks, join_chunks, split_chunk

HEADER = dict(
    task_id="t",
    client_id="3",
    token="s",
    round=2,
    version=1,
    num_samples=5,
    metrics_json='{"loss": 0.5}',
)


@pytest.mark.parametrize("size,chunk", [(0, 4), (1, 1), (1000, 7), (300_001, 1 << 16)])
def test_encode_chunks_equals_protobuf_serialisation(size: int, chunk: int) -> None:
    data = os.urandom(size)
    raw = list(encode_chunks(data, chunk, **HEADER))
    assert raw == [c.SerializeToString() for c in iter_chunks(data, chunk, **HEADER)]
    head, got = join_chunks(raw, size)
    assert bytes(got) == data and head.client_id == "3" and head.total_bytes == size
    head2, got2 = join_chunks([pb.Chunk.FromString(r) for r in raw], size)
    head2.ClearField("data")  # the message form keeps the first chunk's data in its header
    assert got2 == got and head2 == head


def test_split_chunk_returns_header_and_a_view_of_the_data() -> None:
    msg = next(encode_chunks(b"abcdef", 100, **HEADER))
    head, data = split_chunk(msg)
    assert bytes(data) == b"abcdef" and isinstance(data, memoryview)
    assert pb.Chunk.FromString(head).metrics_json == HEADER["metrics_json"]


@pytest.mark.parametrize(
    "msg,match",
    [
        (bytes([9 << 3 | 2, 50]) + b"short", "runs past"),
        (bytes([9 << 3 | 2, 0xFF]), "truncated varint"),
        (bytes([1 << 3 | 5, 0, 0, 0, 0]), "wire type"),
    ],
)
def test_malformed_raw_chunks_are_refused(msg: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        split_chunk(msg)


def test_raw_stream_size_limits_hold() -> None:
    raw = list(encode_chunks(os.urandom(100), 10, **HEADER))
    with pytest.raises(WireError, match="limit"):
        join_chunks(raw, 99)
    with pytest.raises(WireError, match="ended after"):
        join_chunks(raw[:-1], 100)
