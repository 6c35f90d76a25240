"""The client's side of the gRPC stream: a :class:`~.transport.ModelTransport` that always
answers (it is the fallback when the bulk port is not offered or fails).

Models move as raw serialised chunks, copied once each way. Every transfer goes through the
owning :class:`~.channel.ClientChannel`'s ``_call``: retried while the aggregator is unreachable,
and after a check-in again when the aggregator restarted and forgot the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .proto import fedloom_pb2 as pb
from .transport import ModelHeader, join_chunks

if TYPE_CHECKING:
    from .channel import ClientChannel


class GrpcTransport:
    """Models over the gRPC stream, as raw serialised chunks (copied once each way); every
    transfer is retried, and checks in again after an aggregator restart, through ``owner``."""

    name = "grpc"

    def __init__(self, channel: Any, owner: ClientChannel):
        self.owner = owner
        self._download = channel.unary_stream(
            "/fedloom.v1.Aggregator/Download",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )
        self._upload = channel.stream_unary(
            "/fedloom.v1.Aggregator/Upload",
            request_serializer=None,
            response_deserializer=pb.UploadReply.FromString,
        )

    def download(self, header: ModelHeader, limit: int) -> bytearray:
        request = pb.DownloadRequest(
            task_id=header.task_id,
            client_id=header.client_id,
            token=header.token,
            round=header.round,
            version=header.version,
        )
        md = self.owner._md
        _, data = self.owner._call(lambda: join_chunks(self._download(request, metadata=md), limit))
        return data

    def upload(self, header: ModelHeader, parts: tuple[bytes, memoryview]) -> pb.UploadReply:
        payload, md = b"".join(parts), self.owner._md
        reply: pb.UploadReply = self.owner._call(  # the chunks are made anew for each retry
            lambda: self._upload(header.chunks(payload, self.owner.chunk_size), metadata=md)
        )
        return reply
