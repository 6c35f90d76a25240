"""Codecs by name, and the parsing of a config's chain item (``"topk:0.01"``, ``"q8"``).

A codec of your own registers a factory ``(args) -> Codec`` under its name, where ``args``
are the ``:``-separated strings after it, and is then usable in a chain by that name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..registry import Registry
from .cast import F32, Bf16, Fp16
from .codec import Codec
from .qsgd import QSGD
from .randk import RandK
from .sparse import parse_fraction
from .topk import TopK
from .zstd import Zstd

CodecFactory = Callable[[list[str]], Codec]
CODECS: Registry[CodecFactory] = Registry("codec")
register_codec = CODECS.register


def _args(args: list[str], least: int, most: int) -> list[str]:
    if not least <= len(args) <= most:
        want = str(least) if least == most else f"{least} to {most}"
        raise ValueError(f"takes {want} argument(s), got {len(args)}")
    return args


def _integer(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{what} must be a whole number, got {text!r}")
    return int(text)


def _qsgd(args: list[str]) -> Codec:
    args = _args(args, 1, 2)
    chunk = [_integer(args[1], "chunk")] if len(args) == 2 else []
    return QSGD(_integer(args[0], "bits"), *chunk)


def _cast(cls: type[F32 | Fp16 | Bf16]) -> CodecFactory:
    def make(args: list[str]) -> Codec:
        _args(args, 0, 0)
        return cls()

    return make


register_codec("f32", _cast(F32))
register_codec("fp16", _cast(Fp16))
register_codec("bf16", _cast(Bf16))
register_codec("qsgd", _qsgd)
register_codec("topk", lambda a: TopK(parse_fraction(_args(a, 1, 1)[0])))
register_codec("randk", lambda a: RandK(parse_fraction(_args(a, 1, 1)[0])))
register_codec("zstd", lambda a: Zstd(*[_integer(t, "level") for t in _args(a, 0, 1)]))

_SHORT_Q = re.compile(r"q([0-9]+)")  # "q8" is "qsgd:8"
_BUILT_IN = {
    "f32": "f32",
    "fp16": "fp16",
    "bf16": "bf16",
    "qsgd": "q<bits> | qsgd:<bits>[:<chunk>]",
    "topk": "topk:<fraction>",
    "randk": "randk:<fraction>",
    "zstd": "zstd[:<level>]",
}


def valid_items() -> str:
    """What a chain item may be, for error messages (built-in forms, then registered names)."""
    return ", ".join([*_BUILT_IN.values(), *(n for n in CODECS.names() if n not in _BUILT_IN)])


def parse_item(item: str) -> Codec:
    """One chain item as a codec; ``ValueError`` saying what is wrong with it."""
    if not isinstance(item, str):
        raise ValueError(f"{item!r} is not a string")
    short = _SHORT_Q.fullmatch(item)
    name, *args = ["qsgd", short.group(1)] if short else item.split(":")
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}")
    return CODECS.get(name)(args)
