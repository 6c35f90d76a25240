"""The models the aggregator serves: each version serialised once, sent as is to every client.

A published model is its wire bytes (what the bulk port sends) and the same bytes as
serialised Chunk messages (what a gRPC ``Download`` streams), made once per version rather than
once per client. Async rounds also keep the last ``keep_versions`` versions, with their
parameters, so a client that trained on an older one can still download it and its update can
be applied against the model it started from.

With ``compression.down`` a version's bytes are the down chain's packet
(:meth:`~fedloom.compression.link.Compression.pack_model`) instead of the wire format, and the
bytes served are counted (``bytes_down``); with ``compression.up`` each version keeps the
global it encodes (``base``), which an upload's decoded delta is added to.

The aggregator's one lock guards a :class:`Publisher`; its methods expect the caller to hold it
(:meth:`Publisher.serialize` alone touches no shared state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import torch

from ..compression.link import Compression
from ..params import ParamSpec
from ..wire import encode_bundle
from .gate import Refused
from .transport import ModelHeader


@dataclass(frozen=True)
class Published:
    """One version of the model, ready to send."""

    round: int
    version: int
    model: bytes = b""  # the wire bytes: the bulk channel sends them
    chunks: list[bytes] = field(default_factory=list)  # serialised Chunks: gRPC streams them
    # with compression.up: the global that uploads of this version decode against
    base: torch.Tensor | None = field(default=None, compare=False)


class Publisher:
    """The current model, and in async runs the recent versions a stale upload may name."""

    def __init__(
        self,
        spec: ParamSpec,
        task_id: str,
        chunk_size: int,
        keep_versions: int,
        compression: Compression | None = None,
    ):
        self.spec, self.task_id = spec, task_id
        self.chunk_size, self.keep_versions = chunk_size, keep_versions
        self.compression = compression
        self.current = Published(0, 0)
        self._kept: dict[int, tuple[Published, torch.Tensor]] = {}
        self._sent = 0  # bytes of compressed models served since the last take_sent

    def serialize(
        self,
        params: torch.Tensor,
        rnd: int,
        version: int,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> Published:
        """The model's wire bytes (with the plan's extra buffers) and Chunk messages, made once
        for all the clients of a version; the down chain's packet when there is one."""
        c = self.compression
        if c is not None and c.down is not None:
            model = c.pack_model(rnd, params, extras or {})
        else:
            meta = {"round": rnd, "version": version}
            model = encode_bundle(params, self.spec, extras or {}, meta)
        base = params.detach().clone() if c is not None and c.up is not None else None
        header = ModelHeader(self.task_id, rnd, version)
        return Published(rnd, version, model, list(header.chunks(model, self.chunk_size)), base)

    def keep(self, published: Published, params: torch.Tensor) -> None:
        """Keep ``published`` (and the parameters it encodes) for uploads that name it later;
        forget versions ``keep_versions`` or more older."""
        version = published.version
        self._kept[version] = (published, params)
        for old in [v for v in self._kept if v <= version - self.keep_versions]:
            del self._kept[old]

    def kept(self, version: int) -> torch.Tensor | None:
        """The parameters of a kept version, or None once it is too old (or never kept)."""
        entry = self._kept.get(version)
        return None if entry is None else entry[1]

    def base(self, version: int) -> torch.Tensor | None:
        """The global an upload naming ``version`` decodes against (kept or current), if any."""
        entry = self._kept.get(version)
        if entry is not None:
            return entry[1]
        return self.current.base if self.current.version == version else None

    def sent(self, published: Published) -> None:
        """One client was served ``published``: counted when its bytes are a packet."""
        if self.compression is not None and self.compression.down is not None:
            self._sent += len(published.model)

    def take_sent(self) -> dict[str, int]:
        """``{"bytes_down": ...}`` served since the last call (nothing without a down chain)."""
        if self.compression is None or self.compression.down is None:
            return {}
        sent, self._sent = self._sent, 0
        return {"bytes_down": sent}

    def keeps(self, version: int) -> bool:
        return version in self._kept

    @property
    def any_kept(self) -> bool:
        return bool(self._kept)

    def lookup(self, rnd: int, version: int) -> tuple[Published, int]:
        """(the model a client asks for, the current round), if it is current or kept."""
        entry = self._kept.get(version)
        if entry is not None:
            return entry[0], self.current.round
        if (rnd, version) != (self.current.round, self.current.version):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model of round {rnd} version {version} is not current "
                f"(round {self.current.round}, version {self.current.version})",
            )
        return self.current, self.current.round
