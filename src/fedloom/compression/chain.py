"""A chain of codecs, as a config names it: ``["topk:0.01", "q8", "zstd"]``.

The one encode/decode a caller needs. The order is fixed by what each stage consumes:
an optional sparsifier first, then at most one value codec (``f32`` when none is named), then
an optional byte codec. The encoded update's header repeats the chain and the vector length;
the receiver decodes only with its own chain and refuses an update whose header names another
one or another parameter, so a sender can not pick what the receiver runs.

Error feedback: with a sparsifier, what the receiver will *not* get back (the coordinates
left out, and the value codec's error on those sent) is kept in the client's
:class:`~.state.CodecState` and added to the next update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import WireError
from .cast import F32
from .checks import equal, fields, length
from .codec import ByteCodec, Codec, Sparsifier, ValueCodec
from .encoded import Encoded
from .names import parse_item, valid_items
from .state import CodecState

FORMAT = 1
_ROLES = ("a sparsifier", "a value codec", "a byte codec")
ORDER = "sparsifier (topk, randk), value codec (f32, fp16, bf16, qsgd), byte codec (zstd)"


class Chain:
    """Encode a flat float32 vector into an :class:`Encoded`, and decode one back (checked)."""

    def __init__(self, codecs: Sequence[Codec] = ()) -> None:
        slots: list[Codec | None] = [None, None, None]
        last = -1
        for i, codec in enumerate(codecs):
            role = _role(codec)
            if role <= last:
                what = _ROLES[role]
                raise ValueError(
                    f"compression item {i} {codec.spec()!r}: {what} can not follow "
                    f"{codecs[i - 1].spec()!r}; a chain is at most one of each, in this "
                    f"order: {ORDER}"
                )
            slots[role], last = codec, role
        self.sparsifier = slots[0] if isinstance(slots[0], Sparsifier) else None
        self.values: ValueCodec = slots[1] if isinstance(slots[1], ValueCodec) else F32()
        self.bytes = slots[2] if isinstance(slots[2], ByteCodec) else None
        self.stages: list[Codec] = [
            c for c in (self.sparsifier, self.values, self.bytes) if c is not None
        ]
        self.specs = [c.spec() for c in self.stages]

    @classmethod
    def parse(cls, items: Sequence[str]) -> Chain:
        """A chain from config strings; ``ValueError`` naming the bad item and the valid ones."""
        if isinstance(items, str):
            raise ValueError(f"compression chain must be a list of strings, got {items!r}")
        codecs = []
        for i, item in enumerate(items):
            try:
                codecs.append(parse_item(item))
            except ValueError as e:
                raise ValueError(
                    f"compression item {i} {item!r}: {e}; valid items: {valid_items()}"
                ) from None
        return cls(codecs)

    @property
    def lossless(self) -> bool:
        return self.sparsifier is None and self.values.lossless

    def __repr__(self) -> str:
        return f"Chain({self.specs!r})"

    # -- sender ---------------------------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, state: CodecState | None, generator: torch.Generator
    ) -> Encoded:
        """Encode the update ``x`` (1-D float32, finite).

        ``generator`` gives every random draw (stochastic rounding, the random-k mask seed):
        seed it from (run seed, round, client) with :func:`fedloom.seeding.derive_seed` and
        the same update gives the same bytes. ``state`` is the client's codec state; a chain
        with a sparsifier needs it (error feedback), others ignore it.
        """
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 1:
            raise ValueError("encode takes a 1-D float32 tensor")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the update has NaN or infinite values; nothing to encode")
        x = x.detach().cpu().contiguous()
        headers, side = [], b""
        if self.sparsifier is not None:
            if state is None:
                raise ValueError(f"{self.sparsifier.spec()} keeps a residual: pass a CodecState")
            key = f"{self.sparsifier.name}.residual"
            residual = state.get(key)
            if residual is not None and residual.shape != x.shape:
                raise ValueError(
                    f"codec state {key!r} has {residual.numel()} values, not {x.numel()}"
                )
            corrected = x + residual if residual is not None else x.clone()
            idx, head, side = self.sparsifier.select(corrected, generator)
            values = corrected[idx]
            headers.append(head)
        else:
            values = x
        part = self.values.encode(values, generator)
        headers.append(part.header)
        payload = side + part.payload
        if self.bytes is not None:
            packed = self.bytes.compress(payload)
            headers.append(packed.header)
            payload = packed.payload
        if self.sparsifier is not None and state is not None:
            sent = self.values.decode(part.header, part.payload, values.numel())
            corrected[idx] = values - sent  # what the receiver will not have: 0 where exact
            state.set(key, corrected)
        header = {"format": FORMAT, "chain": self.specs, "n": x.numel(), "stages": headers}
        return Encoded(header, payload)

    # -- receiver -------------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview | Encoded, numel: int) -> torch.Tensor:
        """The ``numel`` float32 values of an update from another party, or ``WireError``.

        ``numel`` is what the receiver expects (its model's size): every length is checked
        against it and the header before any buffer is sized, so bad input costs at most
        the work of a valid update.
        """
        enc = data if isinstance(data, Encoded) else Encoded.from_bytes(data)
        where = "compressed update"
        h = fields(enc.header, {"format", "chain", "n", "stages"}, where)
        equal(h, "format", FORMAT, where)
        equal(h, "chain", self.specs, where)
        equal(h, "n", numel, where)
        stages = h["stages"]
        if not isinstance(stages, list) or len(stages) != len(self.stages):
            raise WireError(f"{where}: stages must be a list of {len(self.stages)} headers")
        heads = list(stages)
        side_len, count = 0, numel
        if self.sparsifier is not None:
            side_len = self.sparsifier.check(heads[0], numel)
            count = self.sparsifier.count(numel)
        vhead = heads[1 if self.sparsifier is not None else 0]
        size = side_len + self.values.check(vhead, count)
        raw = enc.payload
        if self.bytes is not None:
            self.bytes.check(heads[-1], size)
            raw = self.bytes.decompress(raw, size)
        length(len(raw), size, f"{where} payload")
        values = self.values.decode(vhead, raw[side_len:], count)
        if not bool(torch.isfinite(values).all()):
            raise WireError(f"{where}: NaN or infinite values")
        if self.sparsifier is None:
            return values
        idx = self.sparsifier.indices(heads[0], raw[:side_len], numel)
        out = torch.zeros(numel, dtype=torch.float32)
        out[idx] = values
        return out


def _role(codec: Codec) -> int:
    """The slot a stage takes: 0 sparsifier, 1 value codec, 2 byte codec."""
    for slot, kind in enumerate((Sparsifier, ValueCodec, ByteCodec)):
        if isinstance(codec, kind):
            return slot
    raise ValueError(f"{codec!r} is not a Sparsifier, ValueCodec or ByteCodec")
