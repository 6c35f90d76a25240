"""Compressed updates: codecs chained as a config names them (``["topk:0.01", "zstd"]``).

A client encodes its update with :meth:`Chain.encode` (seeded, with its :class:`CodecState`
for error feedback); what travels is :meth:`Encoded.to_bytes`, ``Encoded.nbytes`` long; the
receiver decodes with its own chain and the model size, :meth:`Chain.decode`, which checks
every header field and length and raises :class:`~fedloom.errors.WireError` on bad input.
:class:`Compression` is a run's up and down chains, as the engines apply them.
"""

from __future__ import annotations

from .cast import F32, RELATIVE_BOUND, Bf16, Cast, Fp16
from .chain import Chain
from .codec import ByteCodec, Codec, Sparsifier, ValueCodec
from .encoded import Encoded
from .link import Compression
from .names import CODECS, register_codec
from .qsgd import QSGD
from .randk import RandK
from .sparse import FractionSparsifier
from .state import CodecState
from .topk import TopK
from .zstd import Zstd

__all__ = [
    "CODECS",
    "F32",
    "QSGD",
    "RELATIVE_BOUND",
    "Bf16",
    "ByteCodec",
    "Cast",
    "Chain",
    "Codec",
    "CodecState",
    "Compression",
    "Encoded",
    "Fp16",
    "FractionSparsifier",
    "RandK",
    "Sparsifier",
    "TopK",
    "ValueCodec",
    "Zstd",
    "register_codec",
]
