"""The exact size of what the uncompressed wire format sends, without building the bytes.

:func:`fedloom.wire.encode_bundle` writes a safetensors header (names, shapes, offsets and
the metadata strings) and the values; the header is built here by the same
:func:`~fedloom.wire.encode_parts` and the values are counted, not copied, so the round
loop's ``bytes_up`` / ``bytes_down`` are what a socket carries (model plus extras), not an
estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..params import ParamSpec
from ..wire import bundle_spec, encode_parts


class WireSize:
    """``len(encode_bundle(params, spec, extras, meta))``, cached by extras names and meta."""

    def __init__(self, spec: ParamSpec) -> None:
        self.spec = spec
        self._cache: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], int] = {}

    def __call__(self, extras: Iterable[str] = (), meta: Mapping[str, object] | None = None) -> int:
        names = tuple(sorted(extras))
        items = tuple(sorted((str(k), str(v)) for k, v in (meta or {}).items()))
        key = (names, items)
        if key not in self._cache:
            spec = bundle_spec(self.spec, names) if names else self.spec
            # uninitialised memory: only the header is built, the values are a view
            head, values = encode_parts(torch.empty(spec.numel, dtype=spec.dtype), spec, meta)
            self._cache[key] = len(head) + len(values)
        return self._cache[key]
