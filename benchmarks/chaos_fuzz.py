"""Wire fuzz: every decoder that reads another party's bytes, fed mutated bytes in-process.

Part of the chaos benchmark (issue 11). The decoders:

* ``wire``: :func:`fedloom.wire.decode` (plain, into an ``out`` buffer, zero-copy) and
  :func:`fedloom.wire.decode_bundle`: safetensors model bytes checked against a ParamSpec;
* ``chunks``: :func:`fedloom.runtime.transport.split_chunk` and ``join_chunks``: protobuf
  ``Chunk`` framing with a size limit;
* ``bulk``: :func:`fedloom.runtime.bulk.recv_header`, over a socketpair;
* ``proto``: protobuf parsing of ``CheckInRequest``, ``PollRequest``, ``DownloadRequest`` and
  ``Chunk``.

Each case is one valid message, mutated (random bytes, bit flips, truncations, extensions,
header JSON fields with wrong dtypes, shapes, overlapping / out-of-range / huge offsets, NaN
and Inf values, duplicate / missing / unicode names, models for another spec, ...), and is
classified:

* ``rejected``: the documented error (``WireError``; protobuf's ``DecodeError`` for protobuf);
* ``accepted_valid``: decoded to something that matches the spec and is finite, and whose
  values are the bytes an independent reading of the same input gives (a flipped mantissa bit
  gives a valid model: not a wrong accept);
* ``wrong_accepts``: decoded, but the result violates the spec (shape, dtype, size, NaN/Inf,
  over the size limit) or differs from the independent reading;
* ``crashes``: any other exception, a case over 1 s, or Python allocations out of proportion
  to the input and the announced limit (traced with ``tracemalloc``).

Every case is derived from ``(seed, index)`` alone, so ``--case N`` replays one. Besides the
four classes, ``notes`` counts accepted inputs that a stricter reader refuses (the
``safetensors`` library for model bytes, protobuf for chunks): not wrong, but worth knowing.

    .venv/bin/python benchmarks/chaos_fuzz.py --cases 50000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from google.protobuf.message import DecodeError

from fedloom.errors import WireError
from fedloom.params import DTYPE_NAMES, ParamSpec, TensorSpec
from fedloom.runtime import bulk, transport
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.wire import EXTRA_SEP, bundle_spec, decode, decode_bundle, encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_headlines, write_results

CASE_SECONDS = 1.0  # a case slower than this is a hang (the benchmark's budget, on an idle machine)
_limit = {"seconds": CASE_SECONDS}  # run_wire_fuzz(case_seconds=...) sets it for one run
SLACK_BYTES = 1 << 20  # Python allocations allowed beyond the budget below
ALLOC_FACTOR = 64  # ... which is ALLOC_FACTOR x the input bytes (JSON objects outweigh text)
EXAMPLES_PER_CLASS = 5
TARGETS = ("wire", "bundle", "chunks", "bulk", "proto")

F32, F16, F64, BF16 = torch.float32, torch.float16, torch.float64, torch.bfloat16
SPECS = [
    ParamSpec(
        [
            TensorSpec("0.weight", (4, 3), F32),
            TensorSpec("0.bias", (4,), F32),
            TensorSpec("2.weight", (2, 4), F32),
            TensorSpec("2.bias", (2,), F32),
        ]
    ),
    ParamSpec(
        [
            TensorSpec("w", (3, 2), F16),
            TensorSpec("scale", (), F16),
            TensorSpec("empty", (0, 5), F16),
            TensorSpec("v", (2,), F16),
        ]
    ),
    ParamSpec([TensorSpec("x", (5,), F64)]),
    ParamSpec([TensorSpec("emb.weight", (2, 3), BF16), TensorSpec("ln.bias", (3,), BF16)]),
]
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


class Timeout(BaseException):
    """Raised by the alarm inside a case that runs past CASE_SECONDS."""


Result = tuple[str, "str | None", "str | None"]  # (outcome, what was wrong, note)


class Outcome:
    REJECTED, VALID, WRONG, CRASH = "rejected", "accepted_valid", "wrong_accepts", "crashes"


# -- building blocks -------------------------------------------------------------------------
def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def bit_flips(rng: random.Random, data: bytes, lo: int = 0) -> bytes:
    if len(data) <= lo:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        i = rng.randrange(lo, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def generic_mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """The byte-level mutations every target gets."""
    kind = rng.choice(("random", "bitflip", "bitflip", "truncate", "extend", "splice", "zero"))
    if kind == "random":
        return kind, rand_bytes(rng, rng.choice((0, 1, 7, 8, 9, rng.randrange(200))))
    if kind == "bitflip":
        return kind, bit_flips(rng, data)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data) + 1)]
    if kind == "extend":
        tail = rand_bytes(rng, rng.randrange(1, 64)) if rng.random() < 0.5 else b"\0" * 8
        return kind, data + tail
    if kind == "splice":  # overwrite a run with random bytes
        if not data:
            return kind, data
        i = rng.randrange(len(data))
        n = rng.randrange(1, 16)
        return kind, data[:i] + rand_bytes(rng, n) + data[i + n :]
    i = rng.randrange(len(data) + 1)  # zero: delete a run
    return kind, data[:i] + data[i + rng.randrange(1, 8) :]


def random_values(rng: random.Random, spec: ParamSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    return (torch.randn(spec.numel, generator=g, dtype=F64) * 3).to(spec.dtype)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def assemble(header: Any, data: bytes, *, pad: bytes = b" ", text: str | None = None) -> bytes:
    """safetensors bytes of ``header`` (or of the JSON ``text``) and the data section."""
    if text is None:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    head = text.encode("utf-8", "surrogatepass")
    head += pad * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def split_message(msg: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack("<Q", msg[:8])
    return json.loads(msg[8 : 8 + hlen]), msg[8 + hlen :]


def reordered(rng: random.Random, spec: ParamSpec, values: torch.Tensor, meta: dict) -> bytes:
    """The same tensors as another writer may lay them out (e.g. sorted by name)."""
    parts = spec.unflatten(values)
    names = sorted(parts) if rng.random() < 0.5 else rng.sample(list(parts), len(parts))
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    chunks, pos = [], 0
    for name in names:
        raw = tensor_bytes(parts[name])
        header[name] = {
            "dtype": DTYPE_NAMES[spec.dtype],
            "shape": list(parts[name].shape),
            "data_offsets": [pos, pos + len(raw)],
        }
        chunks.append(raw)
        pos += len(raw)
    return assemble(header, b"".join(chunks))


# -- model bytes: values pools for header fields ---------------------------------------------
WEIRD = [
    None,
    True,
    0,
    -1,
    1.5,
    "",
    "F32",
    [],
    {},
    2**64,
    -(2**63),
    10**30,
    float("nan"),
    float("inf"),
    "\ud800",
    "\u00e9",
]
DTYPE_POOL = ["F32", "F64", "F16", "BF16", "I32", "U8", "BOOL", "f32", "F8_E4M3", " F32", *WEIRD]
UNICODE_NAMES = ["0.weight\u0301", "\uff10.weight", "0.weight\x00", "\u202e0.weight", "\ud800", ""]


def mutate_shape(rng: random.Random, shape: list) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return list(reversed(shape))
    if choice == 1:
        return [*shape, 1]
    if choice == 2:
        return shape[:-1]
    if choice == 3:
        return [-d for d in shape] or [-1]
    if choice == 4:
        return [d * 2**32 for d in shape] or [2**62]
    if choice == 5:
        return [float(d) for d in shape]
    if choice == 6:
        return [str(d) for d in shape]
    if choice == 7:
        return [True if d == 1 else d for d in shape]
    return rng.choice(WEIRD)


def mutate_offsets(rng: random.Random, offsets: list, total: int) -> Any:
    s, e = offsets
    size = e - s
    choice = rng.randrange(12)
    if choice == 0:
        return [s + 1, e + 1]  # overlaps the next tensor
    if choice == 1:
        return [max(s - 2, 0), max(e - 2, 0)]  # overlaps the previous one
    if choice == 2:
        return [total, total + size]  # past the end
    if choice == 3:
        return [-size, 0]
    if choice == 4:
        return [2**64 - size, 2**64]
    if choice == 5:
        return [e, s]
    if choice == 6:
        return [s, e, e]
    if choice == 7:
        return [float(s), float(e)]
    if choice == 8:
        return [str(s), str(e)]
    if choice == 9:
        return [s, e + rng.choice((-1, 1, 4, 8))]
    if choice == 10:
        return [0, size]  # every tensor at the start
    return rng.choice(WEIRD)


def make_model_case(rng: random.Random, bundle: bool) -> tuple[str, ParamSpec, bytes]:
    """(mutation, spec, bytes) for the ``wire`` and ``bundle`` targets."""
    spec = rng.choice(SPECS)
    values = random_values(rng, spec)
    meta = {"round": str(rng.randrange(100)), "client": "7"} if rng.random() < 0.5 else {}
    if bundle and rng.random() < 0.7:
        names = sorted(rng.sample(["c", "server_c", "cluster.0", "m-1"], rng.randrange(1, 4)))
        full = bundle_spec(spec, names)
        values = torch.cat([values] + [random_values(rng, spec) for _ in names])
        msg = encode(values, full, meta)
        layout_spec = full
    else:
        reorder = rng.random() < 0.3
        msg = reordered(rng, spec, values, meta) if reorder else encode(values, spec, meta)
        layout_spec = spec
    kind = rng.choice(
        (
            "valid",
            "generic",
            "generic",
            "generic",
            "header_field",
            "header_field",
            "offsets",
            "offsets",
            "names",
            "names",
            "nonfinite",
            "mantissa",
            "wrong_spec",
            "metadata",
            "json_text",
            "hlen",
            "extras",
        )
    )
    if kind == "valid":
        return kind, spec, msg
    if kind == "generic":
        sub, out = generic_mutation(rng, msg)
        return sub, spec, out
    header, data = split_message(msg)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names) if names else None
    if kind == "header_field" and name:
        field = rng.choice(("dtype", "shape", "data_offsets", "drop", "extra"))
        entry = header[name]
        if field == "dtype":
            entry["dtype"] = rng.choice(DTYPE_POOL)
        elif field == "shape":
            entry["shape"] = mutate_shape(rng, entry["shape"])
        elif field == "data_offsets":
            entry["data_offsets"] = mutate_offsets(rng, entry["data_offsets"], len(data))
        elif field == "drop":
            del entry[rng.choice(list(entry))]
        else:
            entry[rng.choice(("extra", "dtype ", "DTYPE"))] = rng.choice(WEIRD)
        if rng.random() < 0.3:
            header[name] = rng.choice(WEIRD)  # not an object at all
        return f"{kind}:{field}", spec, assemble(header, resized(rng, header, data))
    if kind == "offsets" and len(names) >= 2:
        a, b = rng.sample(names, 2)
        oa, ob = header[a]["data_offsets"], header[b]["data_offsets"]
        how = rng.choice(("swap", "same", "gap", "shift_all"))
        if how == "swap":  # valid when the sizes agree: the decoder must follow the offsets
            header[a]["data_offsets"], header[b]["data_offsets"] = ob, oa
        elif how == "same":
            header[a]["data_offsets"] = list(ob)
        elif how == "gap":
            for n in names:
                o = header[n]["data_offsets"]
                if o[0] >= oa[1]:
                    header[n]["data_offsets"] = [o[0] + 8, o[1] + 8]
            data = data + b"\0" * 8
        else:
            k = rng.choice((1, 2, 4, -4))
            for n in names:
                o = header[n]["data_offsets"]
                header[n]["data_offsets"] = [o[0] + k, o[1] + k]
        return f"offsets:{how}", spec, assemble(header, resized(rng, header, data))
    if kind == "names" and name:
        how = rng.choice(("duplicate", "missing", "unknown", "unicode", "rename"))
        if how == "duplicate":  # JSON with a repeated key: the second copy differs
            entry = dict(header[name])
            other = rng.choice(names)
            entry["data_offsets"] = header[other]["data_offsets"]
            body = json.dumps(header, separators=(",", ":"))[:-1]
            text = body + "," + json.dumps(name) + ":" + json.dumps(entry) + "}"
            if rng.random() < 0.5:
                text = "{" + json.dumps(name) + ":" + json.dumps(entry) + "," + body[1:] + "}"
            return f"names:{how}", spec, assemble(None, data, text=text)
        if how == "missing":
            del header[name]
        elif how == "unknown":
            header[rng.choice([*UNICODE_NAMES, "extra.weight"])] = dict(header[name])
        else:  # unicode / rename: the entry moves to a look-alike name
            header[rng.choice(UNICODE_NAMES)] = header.pop(name)
        return f"names:{how}", spec, assemble(header, resized(rng, header, data))
    if kind == "nonfinite":
        bad = values.clone()
        bad[rng.randrange(max(values.numel(), 1))] = rng.choice(
            (float("nan"), float("inf"), -float("inf"))
        )
        if values.numel() == 0:
            return kind, spec, msg
        return kind, spec, encode(bad, layout_spec, meta)
    if kind == "mantissa":
        base = len(msg) - len(data)
        return kind, spec, bit_flips(rng, msg, lo=base)
    if kind == "wrong_spec":
        other = wrong_spec(rng, spec)
        return kind, spec, encode(random_values(rng, other), other, meta)
    if kind == "metadata":
        header["__metadata__"] = rng.choice(
            (
                {"a": 1},
                {"a": None},
                {"a": {"b": "c"}},
                ["a"],
                "meta",
                0,
                None,
                {"\ud800": "x"},
                {"k": "v" * 5000},
                {str(i): str(i) for i in range(500)},
            )
        )
        return kind, spec, assemble(header, data)
    if kind == "json_text":
        return json_text_case(rng, header, data)
    if kind == "hlen":
        (hlen,) = struct.unpack("<Q", msg[:8])
        new = rng.choice(
            (0, 1, hlen - 1, hlen + 1, hlen + 8, len(msg), len(msg) - 7, 2**63, 2**64 - 1, 2**31)
        )
        return kind, spec, struct.pack("<Q", max(new, 0) % 2**64) + msg[8:]
    if kind == "extras":
        return extras_case(rng, header, data, spec)
    sub, out = generic_mutation(rng, msg)
    return sub, spec, out


def resized(rng: random.Random, header: Any, data: bytes) -> bytes:
    """Half the time, grow or cut the data section to the largest end offset announced, so the
    case reaches the checks past the size check."""
    if rng.random() < 0.5 or not isinstance(header, dict):
        return data
    ends = [
        h["data_offsets"][-1]
        for h in header.values()
        if isinstance(h, dict)
        and isinstance(h.get("data_offsets"), list)
        and h["data_offsets"]
        and isinstance(h["data_offsets"][-1], int)
    ]
    end = max(ends, default=len(data))
    if not 0 <= end <= 1 << 16:
        return data
    return data[:end] + b"\0" * max(end - len(data), 0)


def wrong_spec(rng: random.Random, spec: ParamSpec) -> ParamSpec:
    """A spec like ``spec`` with one thing changed: a valid model for another model."""
    entries = list(spec.entries)
    i = rng.randrange(len(entries))
    e = entries[i]
    how = rng.randrange(5)
    if how == 0 and len(e.shape) >= 2 and e.shape[0] != e.shape[-1]:
        entries[i] = TensorSpec(e.name, tuple(reversed(e.shape)), e.dtype)  # transposed
    elif how == 1:
        entries.append(TensorSpec("extra.bias", (3,), e.dtype))
    elif how == 2 and len(entries) > 1:
        del entries[i]
    elif how == 3:
        dtype = rng.choice([d for d in (F32, F64, F16, BF16) if d != e.dtype])
        entries = [TensorSpec(x.name, x.shape, dtype) for x in entries]
    else:
        shape = (*e.shape[:-1], e.shape[-1] + 1) if e.shape else (2,)
        entries[i] = TensorSpec(e.name, shape, e.dtype)  # one more column
    return ParamSpec(entries)


def json_text_case(rng: random.Random, header: dict, data: bytes) -> tuple[str, ParamSpec, bytes]:
    text = json.dumps(header, separators=(",", ":"))
    spec = SPECS[0]
    how = rng.choice(
        ("nesting", "not_object", "nan_literal", "bom", "non_utf8", "nul_pad", "trailing", "utf16")
    )
    if how == "nesting":
        depth = rng.choice((100, 1000, 5000, 50000))
        raw = ("[" * depth + "]" * depth).encode()
        if rng.random() < 0.5:
            raw = ('{"a":' * depth + "1" + "}" * depth).encode()
        return f"json:{how}", spec, struct.pack("<Q", len(raw)) + raw + data
    if how == "not_object":
        return f"json:{how}", spec, assemble(rng.choice(([header], 1, "x", None, True)), data)
    if how == "nan_literal":
        nan = rng.random() < 0.5
        text = text.replace("]", ",NaN]", 1) if nan else text.replace("0", "1e999", 1)
        return f"json:{how}", spec, assemble(None, data, text=text)
    if how == "bom":
        raw = b"\xef\xbb\xbf" + text.encode()
        return f"json:{how}", spec, struct.pack("<Q", len(raw)) + raw + data
    if how == "non_utf8":
        raw = bytearray(text.encode())
        raw[rng.randrange(len(raw))] = rng.choice((0x80, 0xC0, 0xFF, 0xED))
        return f"json:{how}", spec, struct.pack("<Q", len(raw)) + bytes(raw) + data
    if how == "nul_pad":
        return f"json:{how}", spec, assemble(None, data, text=text, pad=b"\0")
    if how == "trailing":
        return f"json:{how}", spec, assemble(None, data, text=text + rng.choice(("x", "{}", "\n1")))
    raw = text.encode("utf-16")
    return f"json:{how}", spec, struct.pack("<Q", len(raw)) + raw + data


def extras_case(rng: random.Random, header: dict, data: bytes, spec: ParamSpec):
    """Bundle names: too many, invalid, or extras whose entries are incomplete."""
    names = [k for k in header if k != "__metadata__" and EXTRA_SEP not in k]
    how = rng.choice(("too_many", "bad_name", "partial", "empty_prefix"))
    if not names:
        return "extras:none", spec, assemble(header, data)
    entry = header[names[0]]
    if how == "too_many":
        for i in range(17):
            header[f"x{i}{EXTRA_SEP}{names[0]}"] = dict(entry)
    elif how == "bad_name":
        header[rng.choice(("a b", "\u00e9", "x" * 65, "a/b")) + EXTRA_SEP + names[0]] = dict(entry)
    elif how == "partial":
        header[f"c{EXTRA_SEP}{names[0]}"] = dict(entry)
    else:
        header[f"{EXTRA_SEP}{names[0]}"] = dict(entry)
    return f"extras:{how}", spec, assemble(header, resized(rng, header, data))


# -- model bytes: the independent reading ----------------------------------------------------
def reference_values(data: bytes, spec: ParamSpec) -> dict[str, bytes] | str:
    """Each spec tensor's bytes as a plain reading of the header's offsets gives them, or why
    the input cannot be read that way."""
    try:
        (hlen,) = struct.unpack("<Q", bytes(data[:8]))
        header = json.loads(bytes(data[8 : 8 + hlen]))
        base = 8 + hlen
        out = {}
        for e in spec.entries:
            h = header[e.name]
            s, t = h["data_offsets"]
            if not (type(s) is int and type(t) is int and 0 <= s <= t <= len(data) - base):
                return f"{e.name}: offsets {h['data_offsets']}"
            if [int(d) for d in h["shape"]] != list(e.shape):
                return f"{e.name}: shape {h['shape']}"
            out[e.name] = bytes(data[base + s : base + t])
        return out
    except Exception as e:  # noqa: BLE001 - any failure means "not readable"
        return f"{type(e).__name__}: {e}"


def strict_reader_refuses(data: bytes) -> str | None:
    """Why the ``safetensors`` library refuses ``data`` (None if it reads it)."""
    try:
        from safetensors.torch import load
    except ImportError:  # pragma: no cover - safetensors ships with fedloom's dependencies
        return None
    try:
        load(bytes(data))
    except Exception as e:  # noqa: BLE001 - whatever the reference library raises
        return f"{type(e).__name__}: {str(e)[:120]}"
    return None


def check_model(
    data: bytes, spec: ParamSpec, flat: torch.Tensor, extras: dict, meta: dict
) -> str | None:
    """Why an accepted model violates ``spec`` (None when it is valid)."""
    full = bundle_spec(spec, sorted(extras)) if extras else spec
    if not isinstance(flat, torch.Tensor) or flat.dtype != spec.dtype:
        return f"result is {type(flat).__name__} {getattr(flat, 'dtype', '')}"
    if flat.shape != (spec.numel,):
        return f"result shape {tuple(flat.shape)}, spec needs ({spec.numel},)"
    for name, t in extras.items():
        if t.shape != (spec.numel,) or t.dtype != spec.dtype:
            return f"extra {name}: {tuple(t.shape)} {t.dtype}"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return f"metadata is not str -> str: {meta!r:.80}"
    values = torch.cat([flat, *(extras[n] for n in sorted(extras))])
    if not bool(torch.isfinite(values).all()):
        return "accepted NaN or Inf values"
    if len(data) - 8 - struct.unpack("<Q", bytes(data[:8]))[0] != full.nbytes:
        return f"data section is not the spec's {full.nbytes} bytes"
    ref = reference_values(data, full)
    if isinstance(ref, str):
        return f"accepted what a plain reading refuses: {ref}"
    for name, t in full.unflatten(values).items():
        if tensor_bytes(t) != ref[name]:
            return f"{name}: values differ from the bytes at its data_offsets"
    return None


# -- the targets -------------------------------------------------------------------------------
def run_wire(rng: random.Random, rec: dict[str, Any]) -> Result:
    """One ``decode`` case: (outcome, detail, note); ``rec`` gets the mutation and input."""
    rec["mutation"], spec, data = make_model_case(rng, bundle=False)
    rec["input"] = data
    how = rng.choice(("plain", "out", "nocopy"))
    container: Any = bytearray(data) if how == "nocopy" else data
    out = torch.full((spec.numel,), 7.0, dtype=spec.dtype) if how == "out" else None
    budget = ALLOC_FACTOR * len(data) + spec.nbytes
    try:
        with limits(budget):
            flat, meta = decode(container, spec, out=out, copy=how != "nocopy")
    except WireError:
        if out is not None and not bool((out == 7.0).all()):
            return Outcome.WRONG, "rejected, but wrote into the out buffer", None
        return Outcome.REJECTED, None, None
    problem = check_model(data, spec, flat, {}, meta)
    if problem is None and out is not None and flat is not out:
        problem = "did not decode into the out buffer"
    return finish(data, problem)


def run_bundle(rng: random.Random, rec: dict[str, Any]) -> Result:
    rec["mutation"], spec, data = make_model_case(rng, bundle=True)
    rec["input"] = data
    budget = ALLOC_FACTOR * len(data) + 17 * spec.nbytes
    try:
        with limits(budget):
            flat, extras, meta = decode_bundle(data, spec)
    except WireError:
        return Outcome.REJECTED, None, None
    return finish(data, check_model(data, spec, flat, extras, meta))


def finish(data: bytes, problem: str | None) -> Result:
    if problem is not None:
        return Outcome.WRONG, problem, None
    return Outcome.VALID, None, strict_reader_refuses(data)


CHUNK_HEADERS = [
    {},
    {"client_id": "3", "round": 4, "version": 9, "num_samples": 120},
    {"task_id": "t", "token": "s3cr\u00e9t", "metrics_json": '{"loss": 0.5}', "round": -1},
]


def make_chunk_case(rng: random.Random) -> tuple[str, list, int]:
    """(mutation, items, max_bytes): a chunk stream (serialised or messages), maybe mutated."""
    data = rand_bytes(rng, rng.choice((0, 1, 10, rng.randrange(3000))))
    size = rng.choice((1, 7, 64, 512, 1 << 20))
    header = dict(rng.choice(CHUNK_HEADERS))
    max_bytes = rng.choice((len(data), len(data) + rng.randrange(1, 100), 1 << 20, len(data) // 2))
    serialised = rng.random() < 0.8
    items: list = list(
        transport.encode_chunks(data, size, **header)
        if serialised
        else transport.iter_chunks(data, size, **header)
    )
    kind = rng.choice(
        ("valid", "byte", "byte", "byte", "total", "total", "stream", "fields", "varint")
    )
    if kind == "valid":
        return kind, items, max_bytes
    if not serialised:
        items = [m.SerializeToString() for m in items]
    i = rng.randrange(len(items))
    if kind == "byte":
        sub, items[i] = generic_mutation(rng, bytes(items[i]))
        return f"byte:{sub}", items, max_bytes
    if kind == "total":
        first = pb.Chunk.FromString(items[0])
        first.total_bytes = rng.choice(
            (-1, -(2**63), 2**63 - 1, max_bytes + 1, len(data) - 1, len(data) + 1, 0, 1 << 40)
        )
        items[0] = first.SerializeToString()
        return kind, items, max_bytes
    if kind == "stream":
        how = rng.choice(("drop", "duplicate", "swap", "empty", "none", "header_later"))
        if how == "drop":
            del items[i]
        elif how == "duplicate":
            items.insert(i, items[i])
        elif how == "swap" and len(items) > 1:
            j = rng.randrange(len(items))
            items[i], items[j] = items[j], items[i]
        elif how == "empty":
            items.insert(rng.randrange(1, len(items) + 1), b"")
        elif how == "none":
            items = []
        else:
            items.append(pb.Chunk(total_bytes=5, client_id="x", data=b"12345").SerializeToString())
        return f"stream:{how}", items, max_bytes
    if kind == "fields":
        extra = rng.choice(
            (
                b"\x78\x05",  # field 15, varint
                b"\xa2\x01\x03abc",  # field 20, bytes
                b"\x0d\x00\x00\x00\x00",  # field 1 as fixed32
                b"\x09" + b"\0" * 8,  # field 1 as fixed64
                b"\x4b\x4c",  # field 9 as a group
                b"\x48\x05",  # field 9 as a varint
                b"\x4a\x02zz",  # a second data field
                b"\x0a\x02\xff\xfe",  # task_id with invalid UTF-8
                b"\x00\x00",  # field 0
            )
        )
        at = rng.choice((0, len(items[i])))
        items[i] = bytes(items[i])[:at] + extra + bytes(items[i])[at:]
        return "fields", items, max_bytes
    prefix = rng.choice(
        (
            b"\x4a" + b"\xff" * 9 + b"\x01",  # data length 2**64 - 1
            b"\x4a" + b"\x80" * 10 + b"\x01",  # an 11-byte varint
            b"\x4a\xff\xff\xff\xff\x07",  # data length 2**35 - 1
            b"\x40" + b"\xff" * 9,  # total_bytes: a varint that never ends
            b"\xff" * 12,  # a key that never ends
        )
    )
    items[i] = prefix + bytes(items[i])
    return "varint", items, max_bytes


def same_header(a: pb.Chunk, b: pb.Chunk) -> bool:
    """Equal header fields (``data`` and unknown fields, which nothing reads, aside)."""
    a, b = pb.Chunk(**{f.name: v for f, v in a.ListFields()}), b
    c = pb.Chunk(**{f.name: v for f, v in b.ListFields()})
    a.ClearField("data"), c.ClearField("data")
    return a == c


def reference_join(items: list) -> tuple[pb.Chunk, bytes] | None:
    """The stream as protobuf reads each message (None when protobuf refuses one)."""
    try:
        msgs = [pb.Chunk.FromString(bytes(m)) if not isinstance(m, pb.Chunk) else m for m in items]
    except DecodeError:
        return None
    if not msgs:
        return None
    head = pb.Chunk()
    head.CopyFrom(msgs[0])
    head.ClearField("data")
    return head, b"".join(m.data for m in msgs)


def run_chunks(rng: random.Random, rec: dict[str, Any]) -> Result:
    mutation, items, max_bytes = make_chunk_case(rng)
    rec["mutation"], rec["input"] = mutation, items
    given = sum(len(m) if not isinstance(m, pb.Chunk) else m.ByteSize() for m in items)
    if rng.random() < 0.3 and items and not isinstance(items[0], pb.Chunk):
        msg = bytes(items[0])  # split_chunk alone, against protobuf's reading
        rec["mutation"] = f"split:{mutation}"
        try:
            with limits(ALLOC_FACTOR * len(msg)):
                head, data = transport.split_chunk(msg)
        except WireError:
            return Outcome.REJECTED, None, None
        ref = reference_join([msg])
        if ref is None:
            return Outcome.VALID, None, "protobuf refuses this chunk"
        ref_head, ref_data = ref
        if bytes(data) != ref_data:
            return Outcome.WRONG, "data differs from protobuf's", None
        try:
            parsed = pb.Chunk.FromString(head)
        except DecodeError:
            return Outcome.VALID, None, "header fields alone refused"
        if not same_header(parsed, ref_head):
            return Outcome.WRONG, "header differs from protobuf's", None
        return Outcome.VALID, None, None
    try:
        with limits(ALLOC_FACTOR * given + max_bytes):
            head, buf = transport.join_chunks(iter(items), max_bytes)
    except WireError:
        return Outcome.REJECTED, None, None
    if not isinstance(buf, bytearray) or len(buf) > max_bytes or len(buf) != head.total_bytes:
        problem = f"{len(buf)} bytes, announced {head.total_bytes}, limit {max_bytes}"
        return Outcome.WRONG, problem, None
    ref = reference_join(items)
    if ref is None:
        return Outcome.VALID, None, "protobuf refuses a chunk of the stream"
    ref_head, ref_data = ref
    if bytes(buf) != ref_data:
        return Outcome.WRONG, "joined bytes differ from protobuf's reading", None
    if not same_header(head, ref_head):
        return Outcome.WRONG, "header differs from protobuf's reading", None
    return Outcome.VALID, None, None


def make_bulk_case(rng: random.Random) -> tuple[str, bytes]:
    header = {
        "op": rng.choice(("upload", "download")),
        "task_id": "t",
        "client_id": str(rng.randrange(100)),
        "token": "abc",
        "round": rng.randrange(10),
        "version": rng.randrange(10),
        "total_bytes": rng.randrange(1 << 20),
    }
    body = json.dumps(header).encode()
    msg = struct.pack(">I", len(body)) + body
    kind = rng.choice(("valid", "byte", "byte", "byte", "length", "json", "json"))
    if kind == "valid":
        return kind, msg
    if kind == "byte":
        sub, out = generic_mutation(rng, msg)
        return f"byte:{sub}", out
    if kind == "length":
        n = rng.choice((0, len(body) - 1, len(body) + 1, bulk.HEADER_MAX, bulk.HEADER_MAX + 1))
        return kind, struct.pack(">I", rng.choice((n, 2**32 - 1))) + body
    how = rng.choice(("nesting", "not_object", "nan", "non_utf8", "utf16", "big", "dupe"))
    if how == "nesting":
        depth = rng.choice((1000, 10000, 30000))
        raw = ("[" * depth + "]" * depth).encode()
    elif how == "not_object":
        raw = rng.choice((b"[]", b"1", b'"x"', b"null", b""))
    elif how == "nan":
        raw = body.replace(b'"round": ', b'"round": NaN, "x": ', 1)
    elif how == "non_utf8":
        raw = body[:5] + b"\xff\xfe" + body[5:]
    elif how == "utf16":
        raw = json.dumps(header).encode("utf-16")
    elif how == "big":
        raw = json.dumps({"a": [[]] * rng.choice((1000, 15000))}).encode()
    else:
        raw = body[:-1] + b', "op": "other"}'
    return f"json:{how}", struct.pack(">I", len(raw)) + raw


def run_bulk(rng: random.Random, rec: dict[str, Any]) -> Result:
    rec["mutation"], msg = make_bulk_case(rng)
    rec["input"] = msg
    (announced,) = struct.unpack(">I", msg[:4]) if len(msg) >= 4 else (0,)
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.settimeout(_limit["seconds"])
        a.sendall(msg)
        a.shutdown(socket.SHUT_WR)
        try:
            with limits(ALLOC_FACTOR * len(msg) + min(announced, bulk.HEADER_MAX)):
                header = bulk.recv_header(b)
        except WireError:
            return Outcome.REJECTED, None, None
    finally:
        a.close()
        b.close()
    if not isinstance(header, dict) or announced > bulk.HEADER_MAX:
        return Outcome.WRONG, f"accepted {type(header).__name__}", None
    return Outcome.VALID, None, None


PROTO_TYPES = [pb.CheckInRequest, pb.PollRequest, pb.DownloadRequest, pb.Chunk]


def make_proto(rng: random.Random, cls: type) -> bytes:
    fields: dict[str, Any] = {}
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if f.type == f.TYPE_STRING:
            fields[f.name] = rng.choice(("", "client-7", "\u00e9\u4e2d", "x" * 300))
        elif f.type == f.TYPE_BYTES:
            fields[f.name] = rand_bytes(rng, rng.randrange(50))
        elif f.type == f.TYPE_BOOL:
            fields[f.name] = rng.random() < 0.5
        else:
            fields[f.name] = rng.choice((0, 1, -1, 2**62, rng.randrange(1000)))
    return cls(**fields).SerializeToString()


def run_proto(rng: random.Random, rec: dict[str, Any]) -> Result:
    cls = rng.choice(PROTO_TYPES)
    msg = make_proto(rng, cls)
    kind = rng.choice(("valid", "byte", "byte", "byte", "inject"))
    if kind == "byte":
        sub, msg = generic_mutation(rng, msg)
        kind = f"byte:{sub}"
    elif kind == "inject":
        extra = rng.choice(
            (
                b"\x0a\x02\xff\xfe",  # string field 1 with invalid UTF-8
                b"\x0b" * 200 + b"\x0c" * 200,  # nested groups
                b"\x0b" * 20000,  # unterminated, deeply nested groups
                b"\x0a\xff\xff\xff\xff\x0f",  # a length past the end
                b"\x20" + b"\xff" * 11,  # an overlong varint
                b"\x7a\x03abc",  # unknown field 15
                b"\x0d\x01\x02\x03\x04",  # field 1 as fixed32
            )
        )
        msg = msg + extra if rng.random() < 0.5 else extra + msg
    rec["mutation"], rec["input"] = f"{cls.__name__}:{kind}", msg
    try:
        with limits(ALLOC_FACTOR * len(msg)):
            parsed = cls.FromString(msg)
    except DecodeError:
        return Outcome.REJECTED, None, None
    again = cls.FromString(parsed.SerializeToString())
    if again != parsed:
        return Outcome.WRONG, "re-serialised message parses differently", None
    return Outcome.VALID, None, None


RUNNERS: dict[str, Callable[[random.Random, dict[str, Any]], Result]] = {
    "wire": run_wire,
    "bundle": run_bundle,
    "chunks": run_chunks,
    "bulk": run_bulk,
    "proto": run_proto,
}


# -- limits: time and memory -----------------------------------------------------------------
class MemoryBlowUp(Exception):
    pass


class limits:
    """Bound one decoder call: an alarm after CASE_SECONDS (main thread only; elsewhere the
    elapsed time is checked afterwards), and the peak of Python allocations against a budget."""

    def __init__(self, budget: int):
        self.budget = budget + SLACK_BYTES

    def __enter__(self) -> limits:
        self.alarm = threading.current_thread() is threading.main_thread()
        if self.alarm:
            self.old = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, _limit["seconds"])
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.t0
        peak = tracemalloc.get_traced_memory()[1] - self.base
        if self.alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        if elapsed > _limit["seconds"] and exc[0] is None:
            raise Timeout(f"took {elapsed:.2f} s")
        if peak > self.budget and exc[0] is None:
            raise MemoryBlowUp(f"allocated {peak} bytes, budget {self.budget}")


def _on_alarm(signum: int, frame: object) -> None:
    raise Timeout(f"still running after {_limit['seconds']} s")


# -- the driver --------------------------------------------------------------------------------
def preview(value: Any, limit: int = 160) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(preview(v, limit // 4) for v in value[:4]) + "]"
    if isinstance(value, pb.Chunk):
        value = value.SerializeToString()
    raw = bytes(value)
    text = repr(raw[:limit])
    return text + (f"... ({len(raw)} bytes)" if len(raw) > limit else "")


def where(e: BaseException) -> str:
    """file:line of the innermost frame of the traceback that lies in fedloom."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "fedloom" in f.filename] or frames
    f = ours[-1]
    return f"{f.filename.split('/src/')[-1]}:{f.lineno}"


def run_case(seed: int, index: int) -> dict[str, Any]:
    rng = random.Random(seed * 1_000_003 + index)
    target = TARGETS[index % len(TARGETS)]
    rec: dict[str, Any] = {"case": index, "target": target, "mutation": "?", "input": b""}
    try:
        outcome, detail, note = RUNNERS[target](rng, rec)
    except (Timeout, MemoryBlowUp, Exception) as e:  # noqa: BLE001 - a crash is what we look for
        outcome, note = Outcome.CRASH, None
        detail = f"{type(e).__name__}: {str(e)[:200]} at {where(e)}"
    data = rec.pop("input")
    rec["outcome"] = outcome
    if detail is not None:
        rec["detail"] = detail
    if note is not None:
        rec["note"] = note
    if outcome in (Outcome.WRONG, Outcome.CRASH) or note is not None:
        rec["input"] = preview(data)
    return rec


def run_wire_fuzz(cases: int, seed: int, case_seconds: float = CASE_SECONDS) -> dict[str, Any]:
    """Run ``cases`` fuzz cases from ``seed``; counts per outcome, per target, and examples.

    ``case_seconds`` is the wall time after which a case counts as a hang. Wall time grows with
    the machine's load, so the tests give a wide bound (a real hang exceeds any bound).
    """
    _limit["seconds"] = case_seconds
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    counts: Counter[str] = Counter()
    by_target: dict[str, Counter[str]] = {t: Counter() for t in TARGETS}
    examples: dict[str, list[dict[str, Any]]] = {Outcome.WRONG: [], Outcome.CRASH: [], "notes": []}
    notes = 0
    t0 = time.perf_counter()
    try:
        for index in range(cases):
            r = run_case(seed, index)
            counts[r["outcome"]] += 1
            by_target[r["target"]][r["outcome"]] += 1
            if r["outcome"] in examples and len(examples[r["outcome"]]) < EXAMPLES_PER_CLASS:
                examples[r["outcome"]].append(r)
            if "note" in r:
                notes += 1
                if len(examples["notes"]) < EXAMPLES_PER_CLASS:
                    examples["notes"].append(r)
    finally:
        if started:
            tracemalloc.stop()
    # crashes from the C side raise a crash's exception too; a real segfault would end the run
    return {
        "cases": cases,
        "seed": seed,
        "rejected": counts[Outcome.REJECTED],
        "accepted_valid": counts[Outcome.VALID],
        "wrong_accepts": counts[Outcome.WRONG],
        "crashes": counts[Outcome.CRASH],
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
        "by_target": {t: dict(c) for t, c in by_target.items()},
        "examples": {k: v for k, v in examples.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", type=int, default=None, help="replay one case and print it")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.case is not None:
        tracemalloc.start()
        print(json.dumps(run_case(args.seed, args.case), indent=2))
        return 0
    result = run_wire_fuzz(args.cases, args.seed)
    for kind, items in result["examples"].items():
        print(f"-- {kind}", file=sys.stderr)
        for item in items:
            print("  " + json.dumps(item), file=sys.stderr)
    path = write_results("chaos_fuzz", result)
    print(f"results: {path}", file=sys.stderr)
    print_headlines(
        {
            "cases": result["cases"],
            "rejected": result["rejected"],
            "accepted_valid": result["accepted_valid"],
            "wrong_accepts": result["wrong_accepts"],
            "crashes": result["crashes"],
            "notes": result["notes"],
            "seconds": result["seconds"],
            "cases_per_second": round(result["cases"] / max(result["seconds"], 1e-9)),
        }
    )
    return 1 if result["wrong_accepts"] or result["crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
