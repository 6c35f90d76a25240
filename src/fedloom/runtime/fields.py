"""The fields a client sends beside the model, checked before anything uses them.

Protobuf messages are parsed by :func:`parser` (a body that does not parse becomes one counted
refusal instead of gRPC's logged traceback); an upload's header fields by :func:`bad_fields`;
the bulk channel's JSON header, whose values could be any JSON type, by :func:`bulk_head`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..update import MAX_METRICS_JSON
from .gate import Refused
from .proto import fedloom_pb2 as pb

INT64 = (-(1 << 63), (1 << 63) - 1)

UNPARSABLE = object()  # a request body that is not a message of its type


def parser(cls: Any) -> Any:
    """``cls.FromString``, but a body that does not parse gives :data:`UNPARSABLE`: the
    handler refuses it as one counted ``malformed`` call (gRPC's own deserializer would log
    a traceback for each)."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            return UNPARSABLE

    return parse


def bad_fields(head: pb.Chunk) -> str | None:
    """Why an upload header's own fields are unusable, or None."""
    if head.num_samples < 1:
        return f"num_samples must be >= 1, got {head.num_samples}"
    if head.round < 0 or head.version < 0:
        return f"round {head.round} / version {head.version} must be >= 0"
    if len(head.metrics_json) > MAX_METRICS_JSON:
        return f"metrics JSON of {len(head.metrics_json)} characters is too long"
    return None


_BULK_INTS = ("round", "version", "num_samples", "total_bytes")
_BULK_STRS = ("task_id", "client_id", "token", "metrics_json")


def bulk_head(header: dict[str, Any]) -> tuple[pb.Chunk, str]:
    """(Chunk with the header's fields, op) with every field's type and range checked."""
    op = header.get("op")
    if op not in ("download", "upload"):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown bulk op {str(op)[:32]!r}", "malformed"
        )
    fields: dict[str, Any] = {}
    for name in _BULK_INTS:
        v = header.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not INT64[0] <= v <= INT64[1]:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bulk header field {name} must be a 64-bit integer",
                "malformed",
            )
        fields[name] = v
    for name in _BULK_STRS:
        v = header.get(name, "")
        if not isinstance(v, str) or len(v) > MAX_METRICS_JSON:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bulk header field {name} must be a string",
                "malformed",
            )
        fields[name] = v
    return pb.Chunk(**fields), op
