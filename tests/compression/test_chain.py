"""The chain: parsing, the encoded format, determinism, and the checks a decoder makes."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pytest
import torch
import zstandard

from fedloom.compression import CODECS, Chain, CodecState, Encoded, Fp16, register_codec
from fedloom.compression.encoded import MAGIC, MAX_HEADER_BYTES
from fedloom.errors import WireError

from .helpers import gen

CHAINS = [
    [],
    ["fp16"],
    ["bf16", "zstd"],
    ["q8"],
    ["qsgd:3:100", "zstd:9"],
    ["topk:0.01"],
    ["topk:0.01", "zstd"],
    ["topk:0.05", "q8", "zstd"],
    ["randk:0.05"],
    ["randk:0.1", "fp16", "zstd"],
    ["zstd"],
]


@pytest.mark.parametrize("items", CHAINS, ids=lambda c: "+".join(c) or "none")
def test_same_seed_same_bytes_and_nbytes_is_the_wire_length(items: list[str]) -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    chain = Chain.parse(items)
    a = chain.encode(x, CodecState(), gen(1, 2, 3))
    b = chain.encode(x, CodecState(), gen(1, 2, 3))
    assert a.to_bytes() == b.to_bytes()
    assert a.nbytes == len(a.to_bytes())
    assert Chain.parse(items).decode(a.to_bytes(), 5000).shape == (5000,)
    assert json.loads(a.header_bytes())["chain"] == chain.specs


def test_specs_are_canonical_and_name_the_implicit_value_stage() -> None:
    assert Chain.parse(["q8"]).specs == Chain.parse(["qsgd:8"]).specs == ["qsgd:8"]
    assert Chain.parse(["topk:0.010", "zstd:3"]).specs == ["topk:0.01", "f32", "zstd"]
    assert Chain.parse([]).specs == ["f32"]


@pytest.mark.parametrize(
    "items, message",
    [
        (["topq:0.1"], "item 0 'topq:0.1': unknown codec 'topq'; valid items: f32, fp16"),
        (["fp16", "topk:0.1"], "item 1 'topk:0.1': a sparsifier can not follow 'fp16'"),
        (["zstd", "zstd"], "item 1 'zstd': a byte codec can not follow 'zstd'"),
        (["q8", "bf16"], "item 1 'bf16': a value codec can not follow 'qsgd:8'"),
        (["fp16:2"], "item 0 'fp16:2': takes 0 argument"),
        (["zstd:0"], "item 0 'zstd:0': zstd level must be in 1..22"),
        ("fp16", "must be a list of strings"),
        ([3], "item 0 3: 3 is not a string"),
    ],
)
def test_bad_chains_fail_early_naming_the_item(items: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Chain.parse(items)


def reframe(data: bytes, edit: Any) -> bytes:
    """The same update with its JSON header changed by ``edit``."""
    enc = Encoded.from_bytes(data)
    header = json.loads(enc.header_bytes())
    edit(header)
    return Encoded(header, enc.payload).to_bytes()


def encoded(items: list[str], n: int = 3000) -> bytes:
    x = torch.randn(n, generator=torch.Generator().manual_seed(4))
    return Chain.parse(items).encode(x, CodecState(), gen(0)).to_bytes()


@pytest.mark.parametrize(
    "items, edit, message",
    [
        (["q8"], lambda h: h.update(chain=["qsgd:4"]), "chain = \\['qsgd:4'\\]"),
        (["q8"], lambda h: h["stages"][0].update(bits=4), "bits = 4"),
        (["q8"], lambda h: h["stages"][0].update(bits=8.0), "bits = 8.0"),
        (["q8"], lambda h: h.update(n=2**40), "n = 1099511627776"),
        (["q8"], lambda h: h.update(n=True), "n = True"),
        (["q8"], lambda h: h.update(format=2), "format = 2"),
        (["q8"], lambda h: h.update(extra=1), "header keys"),
        (["q8"], lambda h: h.update(stages={}), "stages must be a list"),
        (["topk:0.01"], lambda h: h["stages"][0].update(k=10**9), "k = 1000000000"),
        (["topk:0.01"], lambda h: h["stages"][0].update(width=3), "index width 3"),
        (["topk:0.01"], lambda h: h["stages"][0].update(width=1), "trailing bytes in"),
        (["topk:0.01"], lambda h: h["stages"][0].update(width=4), "truncated"),
        (["randk:0.1"], lambda h: h["stages"][0].update(seed=-1), "seed = -1 is outside"),
        (["randk:0.1"], lambda h: h["stages"][0].update(seed="1"), "is not an integer"),
        (["fp16", "zstd"], lambda h: h["stages"][1].update(size=2**62), "size = "),
        (["fp16", "zstd"], lambda h: h["stages"][0].update(x=1), "header keys"),
    ],
)
def test_every_header_field_is_checked(items: list[str], edit: Any, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Chain.parse(items).decode(reframe(encoded(items), edit), 3000)


def test_the_receiver_decodes_only_its_own_chain_and_size() -> None:
    data = encoded(["topk:0.01", "zstd"])
    with pytest.raises(WireError, match="chain = "):
        Chain.parse(["topk:0.02", "zstd"]).decode(data, 3000)
    with pytest.raises(WireError, match="n = 3000, this chain expects 3001"):
        Chain.parse(["topk:0.01", "zstd"]).decode(data, 3001)


def framed(header: bytes, payload: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def test_framing_is_checked() -> None:
    data = encoded(["fp16"])
    chain = Chain.parse(["fp16"])
    for bad, message in [
        (b"", "truncated"),
        (b"XXXX" + data[4:], "magic"),
        (MAGIC + struct.pack("<I", MAX_HEADER_BYTES + 1) + data[8:], "header length"),
        (MAGIC + struct.pack("<I", 2**32 - 1) + data[8:], "header length"),
        (data[:-1], "truncated compressed update payload"),
        (data + b"\0", "trailing bytes in compressed update payload"),
        (framed(b"[]"), "not a JSON object"),
        (framed(b"\xff{}"), "not valid JSON"),
        (framed(b'{"n":NaN}'), "not valid JSON"),
        (framed(b'{"a":1, "a":2}'), "duplicate key"),
        (framed(b"[" * 30_000 + b"]" * 30_000), "not valid JSON"),
        (framed(b'{"n":' + b"9" * 5000 + b"}"), "not valid JSON"),  # over Python's digit limit
    ]:
        with pytest.raises(WireError, match=message):
            chain.decode(bad, 3000)


def test_non_finite_values_and_bad_scales_are_refused() -> None:
    data = bytearray(encoded(["fp16"], n=4))
    data[-2:] = b"\x00\x7c"  # float16 +inf
    with pytest.raises(WireError, match="NaN or infinite"):
        Chain.parse(["fp16"]).decode(bytes(data), 4)
    q = bytearray(encoded(["q8"], n=4))
    head = len(q) - 4 - 8  # lo (f32), scale (f32), four 1-byte codes
    q[head + 4 : head + 8] = struct.pack("<f", -1.0)
    with pytest.raises(WireError, match="finite and >= 0"):
        Chain.parse(["q8"]).decode(bytes(q), 4)
    q[head + 4 : head + 8] = struct.pack("<f", float("nan"))
    with pytest.raises(WireError, match="finite and >= 0"):
        Chain.parse(["q8"]).decode(bytes(q), 4)
    q[head : head + 8] = struct.pack("<ff", 3e38, 3e38)  # lo + scale overflows float32
    with pytest.raises(WireError, match="exceeds float32"):
        Chain.parse(["q8"]).decode(bytes(q), 4)


def test_repeated_or_out_of_range_topk_indices_are_refused() -> None:
    items = ["topk:0.5"]
    chain = Chain.parse(items)
    enc = Encoded.from_bytes(chain.encode(torch.arange(1.0, 9.0), CodecState(), gen(0)).to_bytes())
    assert enc.header["stages"][0] == {"k": 4, "width": 1}
    gaps, values = enc.payload[:4], enc.payload[4:]
    assert gaps == bytes([4, 1, 1, 1])  # indices 4..7, the largest
    for bad, message in [(bytes([4, 1, 0, 1]), "repeated"), (bytes([4, 1, 1, 2]), "out of range")]:
        with pytest.raises(WireError, match=message):
            chain.decode(Encoded(enc.header, bad + values), 8)


def test_zstd_frames_are_bounded_before_decompressing() -> None:
    chain = Chain.parse(["fp16", "zstd"])
    good = Encoded.from_bytes(encoded(["fp16", "zstd"], n=100))
    z = zstandard.ZstdCompressor()
    # a frame that declares another size than the header implies (200 bytes)
    wrong = z.compress(b"\0" * 10_000)
    # a streamed frame with no declared size that expands to 64 MiB: never decompressed
    stream = z.compressobj()
    bomb = b"".join(stream.compress(b"\0" * (1 << 20)) for _ in range(64)) + stream.flush()
    trailing = good.payload + b"\0"
    for payload, message in [
        (wrong, "frame declares 10000 bytes, the header implies 200"),
        (bomb, "frame declares -1 bytes"),
        (trailing, "trailing bytes"),
        (b"", "not a zstd frame"),
        (good.payload[:-3], "incomplete frame"),
    ]:
        with pytest.raises(WireError, match=message):
            chain.decode(Encoded(good.header, payload), 100)
    flipped = bytearray(good.payload)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(WireError, match="zstd"):  # the frame checksum catches it
        chain.decode(Encoded(good.header, bytes(flipped)), 100)


def test_a_codec_registered_by_name_joins_chains_and_the_error_list() -> None:
    class Half(Fp16):
        """fp16 under a name of its own, as a user's codec would be."""

        name = "half"
        usage = "half"

        def spec(self) -> str:
            return "half"

    register_codec("half", lambda args: Half())
    try:
        x = torch.randn(100)
        chain = Chain.parse(["topk:0.5", "half", "zstd"])
        y = chain.decode(chain.encode(x, CodecState(), gen(0)).to_bytes(), 100)
        assert int((y != 0).sum()) == 50
        with pytest.raises(ValueError, match=r"valid items: .*zstd\[:<level>\], half"):
            Chain.parse(["halve"])
    finally:
        CODECS.unregister("half")
    with pytest.raises(ValueError, match="unknown codec 'half'"):
        Chain.parse(["half"])
