"""Model bytes on the wire: the safetensors format, checked against the model's spec.

The encoder writes a standard safetensors buffer (8-byte little-endian header length, a JSON
header with ``dtype``/``shape``/``data_offsets`` per tensor and string ``__metadata__``, then raw
little-endian data), so any safetensors reader can open fedloom's bytes and vice versa.

The decoder is fedloom's own, because it must refuse bad bytes *before* using them and write
good ones straight into a flat buffer: it checks the header against the :class:`ParamSpec`
(unknown or missing names, shapes, dtypes, offsets, truncated or trailing data) and the values
(NaN/Inf), and raises :class:`WireError` naming what was wrong. Nothing is ever unpickled.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import WireError
from .params import DTYPE_NAMES, DTYPES, ParamSpec, TensorSpec

MAX_HEADER_BYTES = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("fedloom's wire format needs a little-endian host")


def encode(flat: torch.Tensor, spec: ParamSpec, meta: Mapping[str, object] | None = None) -> bytes:
    """Serialise the flat buffer ``flat`` laid out by ``spec`` as safetensors bytes."""
    head, values = encode_parts(flat, spec, meta)
    return b"".join((head, values))  # one copy


def encode_parts(
    flat: torch.Tensor, spec: ParamSpec, meta: Mapping[str, object] | None = None
) -> tuple[bytes, memoryview]:
    """:func:`encode`'s bytes as (header, values) without copying the values: a socket can
    send them one after the other straight from the tensor's memory."""
    if flat.numel() != spec.numel or flat.dtype != spec.dtype:
        raise WireError(
            f"buffer of {flat.numel()} {flat.dtype} values does not fit spec "
            f"({spec.numel} {spec.dtype} values)"
        )
    header: dict[str, object] = {}
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    itemsize = _ITEMSIZE[DTYPE_NAMES[spec.dtype]]
    start = 0
    for e in spec.entries:
        end = start + e.numel * itemsize
        header[e.name] = {
            "dtype": DTYPE_NAMES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [start, end],
        }
        start = end
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    values = flat.detach().cpu().contiguous().view(torch.uint8).numpy()  # a view, no copy
    return struct.pack("<Q", len(head)) + head, values.data  # the array's own memoryview


def read_header(
    data: bytes | bytearray | memoryview,
) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse the safetensors header: (tensor entries, metadata, offset of the data section)."""
    view = memoryview(data)
    if len(view) < 8:
        raise WireError(f"truncated message: {len(view)} bytes, not even a header length")
    (hlen,) = struct.unpack("<Q", view[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(view):
        raise WireError(f"header length {hlen} does not fit a message of {len(view)} bytes")
    try:  # strict UTF-8 as safetensors has it (json.loads(bytes) would take UTF-16, a BOM, ...)
        header = json.loads(str(view[8 : 8 + hlen], "utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WireError("__metadata__ must map strings to strings")
    return header, meta, 8 + hlen


def _no_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def decode(
    data: bytes | bytearray | memoryview,
    spec: ParamSpec,
    out: torch.Tensor | None = None,
    check_finite: bool = True,
    copy: bool = True,
) -> tuple[torch.Tensor, dict[str, str]]:
    """Check ``data`` against ``spec`` and return (flat buffer, metadata).

    ``out``, when given, receives the values (no allocation); it is left untouched if the bytes
    are rejected, so a bad update never corrupts state. ``copy=False`` lets the result share a
    writable buffer's memory (a received ``bytearray`` the caller gives up), saving a copy of
    the whole model; by default the result owns its memory.
    """
    header, meta, base = read_header(data)
    layout = _check_header(header, spec)
    got = len(data) - base
    if got != spec.nbytes:
        what = "truncated" if got < spec.nbytes else "trailing bytes"
        raise WireError(f"{what}: data section has {got} bytes, the spec needs {spec.nbytes}")
    values = _gather(memoryview(data)[base:], spec, layout)
    if check_finite:
        check_finite_values(values, spec)
    if out is None:
        shared = layout is None and not copy and not memoryview(data).readonly
        return (values if layout is not None or shared else values.clone()), meta
    if out.numel() != spec.numel or out.dtype != spec.dtype:
        raise ValueError(f"out buffer ({out.numel()} {out.dtype}) does not fit {spec}")
    out.copy_(values)
    return out, meta


def _gather(buf: memoryview, spec: ParamSpec, layout: list[int] | None) -> torch.Tensor:
    """The values in spec order: a zero-copy view when the bytes are laid out in spec order."""
    if spec.numel == 0:
        return torch.empty(0, dtype=spec.dtype)
    with warnings.catch_warnings():  # read-only bytes: we copy before anyone writes
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(buf, dtype=torch.uint8)
    if layout is None:
        return raw.view(spec.dtype)
    itemsize = _ITEMSIZE[DTYPE_NAMES[spec.dtype]]
    return torch.cat(
        [raw[s : s + e.numel * itemsize].view(spec.dtype) for e, s in zip(spec.entries, layout)]
    )


def check_finite_values(flat: torch.Tensor, spec: ParamSpec, where: str = "update") -> None:
    """Raise :class:`WireError` naming the tensors that hold NaN or Inf."""
    if math.isfinite(flat.sum().item()):
        return  # one fused reduction; only a non-finite (or overflowing) buffer pays the scan
    bad = [n for n, t in spec.unflatten(flat).items() if not bool(torch.isfinite(t).all())]
    if bad:  # a finite buffer whose sum merely overflowed (e.g. fp16) is fine
        raise WireError(f"{where} has NaN or Inf values in {bad}")


def _check_header(header: dict[str, Any], spec: ParamSpec) -> list[int] | None:
    """Validate names, dtypes, shapes and offsets; return per-tensor starts, or None if in order.

    Any layout a safetensors writer may choose is accepted (the reference library sorts by
    name), as long as the tensors tile the data section exactly, without gaps or overlaps.
    """
    problems = spec.name_problems(header)
    starts: list[int] = []
    spans: list[tuple[int, int, str]] = []
    for e in spec.entries:
        if e.name not in header:
            continue  # a missing name, already in problems
        h = header[e.name]
        if not isinstance(h, dict):
            problems.append(f"{e.name}: malformed entry")
            continue
        dtype, shape, offsets = h.get("dtype"), h.get("shape"), h.get("data_offsets")
        if not isinstance(dtype, str) or DTYPES.get(dtype) != e.dtype:
            problems.append(f"{e.name}: dtype {dtype}, expected {DTYPE_NAMES[e.dtype]}")
        if not isinstance(shape, list) or not _ints(shape) or tuple(shape) != e.shape:
            problems.append(f"{e.name}: shape {shape}, expected {list(e.shape)}")
        size = e.numel * _ITEMSIZE[DTYPE_NAMES[e.dtype]]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not _ints(offsets)
            or offsets[1] - offsets[0] != size
        ):
            problems.append(f"{e.name}: data_offsets {offsets} do not hold {size} bytes")
            continue
        starts.append(offsets[0])
        spans.append((offsets[0], offsets[1], e.name))
    if not problems:
        pos = 0
        for begin, end, name in sorted(spans):
            if begin != pos:
                problems.append(f"{name}: data_offsets start at {begin}, expected {pos}")
                break
            pos = end
    if problems:
        raise WireError("message does not match the model spec: " + "; ".join(problems))
    in_order = all(b <= a for b, a in itertools.pairwise(starts)) if starts else True
    return None if in_order else starts


def _ints(values: list[Any]) -> bool:
    """JSON integers only: not 2.0, which equals 2, nor true, which equals 1."""
    return all(type(v) is int for v in values)


# -- bundles: the model plus named flat buffers laid out like it ------------------------------
EXTRA_SEP = "::"  # never in a module's parameter names, which use "."
MAX_EXTRAS = 16
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def bundle_spec(spec: ParamSpec, names: Sequence[str]) -> ParamSpec:
    """``spec`` followed by a copy of its entries per extra buffer, named ``extra::entry``."""
    extra = [
        TensorSpec(f"{n}{EXTRA_SEP}{e.name}", e.shape, e.dtype) for n in names for e in spec.entries
    ]
    return ParamSpec([*spec.entries, *extra])


def encode_bundle(
    flat: torch.Tensor,
    spec: ParamSpec,
    extras: Mapping[str, torch.Tensor],
    meta: Mapping[str, object] | None = None,
) -> bytes:
    """:func:`encode` of ``flat`` plus ``extras`` (flat buffers like ``flat``: SCAFFOLD's control
    variates, IFCA's cluster models). Without extras it is exactly :func:`encode`."""
    if not extras:
        return encode(flat, spec, meta)
    names = sorted(extras)
    _check_extra_names(names)
    parts = [flat, *(extras[n] for n in names)]
    values = torch.cat([t.detach().reshape(-1) for t in parts])
    return encode(values, bundle_spec(spec, names), meta)


def decode_bundle(
    data: bytes | bytearray | memoryview, spec: ParamSpec, *, copy: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, str]]:
    """(flat, extras, metadata) of a bundle, every buffer checked as :func:`decode` checks the
    model (names, dtypes, shapes, offsets, sizes, NaN/Inf). Plain model bytes give no extras."""
    header, _, _ = read_header(data)
    names = sorted({k.split(EXTRA_SEP, 1)[0] for k in header if EXTRA_SEP in k})
    _check_extra_names(names)
    values, meta = decode(data, bundle_spec(spec, names) if names else spec, copy=copy)
    n = spec.numel
    extras = {name: values[(i + 1) * n : (i + 2) * n] for i, name in enumerate(names)}
    return values[:n], extras, meta


def _check_extra_names(names: Sequence[str]) -> None:
    if len(names) > MAX_EXTRAS:
        raise WireError(f"{len(names)} extra buffers; at most {MAX_EXTRAS} are accepted")
    bad = [n for n in names if not _EXTRA_NAME.match(n)]
    if bad:
        raise WireError(f"extra buffer names {bad} are not [A-Za-z0-9_.-]{{1,64}}")
