"""What a codec is: one stage of a chain, in one of three roles.

A chain reads ``[sparsifier] [value codec] [byte codec]`` (``["topk:0.01", "q8", "zstd"]``):
a sparsifier picks which coordinates travel, a value codec writes those values as bytes, a
byte codec compresses all the bytes. The roles have different inputs (a vector, the kept
values, bytes), so each has its own small interface here; :class:`~.chain.Chain` runs them
and is the one ``encode(x, state) -> Encoded`` / ``decode(data, numel) -> Tensor`` a caller
needs.

Decoding is split in two: ``check`` validates a stage's header against what this receiver's
own chain says and returns the byte length it implies, before any payload byte is read or any
buffer sized; only then does ``decode`` run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from .encoded import Encoded


class Codec(ABC):
    """A stage named in a config as ``name`` or ``name:arg``; ``spec()`` gives that string."""

    name: ClassVar[str]
    usage: ClassVar[str]  # how a config writes it, for error messages ("topk:<fraction>")
    lossless: ClassVar[bool] = False

    @abstractmethod
    def spec(self) -> str:
        """The canonical config string; the header repeats it, the receiver compares it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


class Sparsifier(Codec):
    """Chooses ``count(n)`` coordinates of a vector; the chain sends only their values.

    What is not sent is kept as the client's residual and added to the next update (error
    feedback), so nothing is lost, only delayed; the chain owns that bookkeeping.
    """

    @abstractmethod
    def count(self, n: int) -> int:
        """How many coordinates of an ``n``-vector travel (both sides compute it)."""

    @abstractmethod
    def select(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any], bytes]:
        """(sorted int64 indices, stage header, index bytes) for the vector ``x``."""

    @abstractmethod
    def check(self, header: object, n: int) -> int:
        """Validate the stage header; the length of the index bytes it implies."""

    @abstractmethod
    def indices(self, header: dict[str, Any], data: bytes, n: int) -> torch.Tensor:
        """The sorted, distinct indices in ``[0, n)`` (``WireError`` otherwise)."""


class ValueCodec(Codec):
    """Writes a float32 vector as bytes and reads it back."""

    @abstractmethod
    def encode(self, values: torch.Tensor, generator: torch.Generator) -> Encoded:
        """The stage header and payload for ``values`` (1-D float32, finite)."""

    @abstractmethod
    def check(self, header: object, count: int) -> int:
        """Validate the stage header for ``count`` values; the payload length it implies."""

    @abstractmethod
    def decode(self, header: dict[str, Any], data: bytes, count: int) -> torch.Tensor:
        """``count`` float32 values from a checked header and a payload of checked length."""


class ByteCodec(Codec):
    """A lossless compressor over the bytes the stages before it wrote."""

    lossless = True

    @abstractmethod
    def compress(self, data: bytes) -> Encoded:
        """The stage header and the compressed bytes."""

    @abstractmethod
    def check(self, header: object, size: int) -> None:
        """Validate the stage header against the ``size`` the other stages imply."""

    @abstractmethod
    def decompress(self, data: bytes, size: int) -> bytes:
        """Exactly ``size`` bytes, never allocating more (``WireError`` otherwise)."""
