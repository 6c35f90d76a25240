"""Fuzzed compressed updates: a decoder answers ``WireError`` or a valid vector, nothing else.

Each case encodes a random vector with a random chain, mutates the bytes (truncation,
extension, bit flips in the header or the payload, spliced runs, header fields set to wrong
types, negative or huge values, missing or extra keys, a wrong header length, the payload of
another update) and decodes with the receiver's chain and model size. Outcomes:

* rejected: ``WireError``;
* valid: a float32 vector of the expected size with finite values;
* wrong: anything else returned; crash: any other exception, a case over the time bound, or
  Python allocations (numpy included, as tracemalloc sees them) out of proportion.

As ``tests/test_wire_fuzz.py`` does for the model format; every case derives from
``(SEED, index)``, so a failing one replays alone.
"""

from __future__ import annotations

import json
import random
import signal
import struct
import tracemalloc
from collections import Counter
from typing import Any

import torch

from fedloom.compression import Chain, CodecState
from fedloom.compression.encoded import MAGIC
from fedloom.errors import WireError

from .helpers import gen

SEED = 13
CASES = 3000
CASE_SECONDS = 30.0  # a hang is unbounded: a wide bound for a shared machine still finds one
CHAINS = [
    ["f32"],
    ["fp16"],
    ["bf16", "zstd"],
    ["q8"],
    ["qsgd:3:64"],
    ["q1", "zstd"],
    ["qsgd:16:100"],
    ["topk:0.05"],
    ["topk:0.02", "zstd"],
    ["topk:0.1", "q4", "zstd"],
    ["randk:0.05"],
    ["randk:0.1", "fp16", "zstd"],
    ["zstd"],
]
SIZES = (0, 1, 2, 7, 64, 300, 1000, 2500)
WEIRD: list[Any] = [
    None, True, False, 0, 1, -1, 3, 4, 8, 1.5, 8.0, "", "8", [], {}, [1], {"k": 1},
    2**31, 2**32, 2**53, 2**63, 2**64, -(2**63), 10**30, 10**300, 1e308, -0.0,
    ["f32"], ["qsgd:8"], ["topk:0.05", "f32"], "\u00e9",
]  # fmt: skip


KINDS = (
    "header", "header", "header", "flip_header", "flip_payload", "flip_payload",
    "truncate", "extend", "splice", "hlen", "swap_payload", "random",
)  # fmt: skip


class Timeout(BaseException):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Timeout(f"still running after {CASE_SECONDS} s")


def flip(rng: random.Random, data: bytes, lo: int, hi: int) -> bytes:
    if hi <= lo:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def edit_header(rng: random.Random, header: dict[str, Any]) -> None:
    """Set, delete or add one field, at the top or in one stage's header."""
    target: Any = header
    if rng.random() < 0.6 and header["stages"]:
        target = rng.choice(header["stages"])
    keys = list(target) or ["x"]
    action = rng.random()
    if action < 0.75:
        target[rng.choice(keys)] = rng.choice(WEIRD) if rng.random() < 0.6 else _near(rng, target)
    elif action < 0.9 and target:
        del target[rng.choice(keys)]
    else:
        target[rng.choice(["extra", "k", "size", "seed", "chunk"])] = rng.choice(WEIRD)


def _near(rng: random.Random, target: dict[str, Any]) -> Any:
    """An int near an existing value, or huge: off-by-one sizes, counts and widths."""
    ints = [v for v in target.values() if type(v) is int] or [0]
    return rng.choice(ints) + rng.choice((-1, 1, 2, -2, 1 << 20, 1 << 40))


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[str, bytes]:
    hlen = struct.unpack("<I", data[4:8])[0]
    start = 8 + hlen
    kind = rng.choice(KINDS)
    if kind == "header":
        header = json.loads(data[8:start])
        edit_header(rng, header)
        text = json.dumps(header).encode()
        return kind, MAGIC + struct.pack("<I", len(text)) + text + data[start:]
    if kind == "flip_header":
        return kind, flip(rng, data, 0, start)
    if kind == "flip_payload":
        return kind, flip(rng, data, start, len(data))
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data) + 1)]
    if kind == "extend":
        return kind, data + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
    if kind == "splice":
        i, n = rng.randrange(len(data)), rng.randrange(1, 16)
        return kind, data[:i] + bytes(rng.getrandbits(8) for _ in range(n)) + data[i + n :]
    if kind == "hlen":
        hl = rng.choice((0, 1, hlen - 1, hlen + 1, 2**16, 2**32 - 1, rng.randrange(2**32)))
        return kind, MAGIC + struct.pack("<I", hl) + data[8:]
    if kind == "swap_payload":  # this header, another update's payload
        other_start = 8 + struct.unpack("<I", other[4:8])[0]
        return kind, data[:start] + other[other_start:]
    return kind, bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))


def run_case(index: int) -> tuple[str, str, str]:
    """(outcome, mutation, detail) of case ``index``."""
    rng = random.Random(SEED * 1_000_003 + index)
    items = rng.choice(CHAINS)
    n = rng.choice(SIZES)
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    x = torch.randn(n, generator=g) * 10 ** rng.uniform(-3, 3)
    if n and rng.random() < 0.3:
        x[rng.randrange(n) :] = 0.0  # long runs of zeros: constant chunks, zero gaps
    chain = Chain.parse(items)
    data = chain.encode(x, CodecState(), gen(index)).to_bytes()
    other = Chain.parse(rng.choice(CHAINS)).encode(x, CodecState(), gen(index + 1)).to_bytes()
    kind, bad = mutate(rng, data, other)
    numel = n if rng.random() < 0.9 else rng.choice(SIZES)
    budget = (1 << 20) + 64 * len(bad) + 64 * numel
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        out = chain.decode(bad, numel)
    except WireError:
        return "rejected", kind, ""
    except (Timeout, Exception) as e:  # noqa: BLE001 - any other exception is what we look for
        return "crash", kind, f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    peak = tracemalloc.get_traced_memory()[1] - base
    if peak > budget:
        return "crash", kind, f"allocated {peak} bytes, budget {budget}"
    ok = out.shape == (numel,) and out.dtype == torch.float32 and bool(out.isfinite().all())
    return ("valid" if ok else "wrong"), kind, "" if ok else f"got {out.shape} {out.dtype}"


def test_fuzzed_updates_are_rejected_or_valid_never_a_crash() -> None:
    tracemalloc.start()
    try:
        results = [run_case(i) for i in range(CASES)]
    finally:
        tracemalloc.stop()
    outcomes = Counter(o for o, _, _ in results)
    bad = [(i, r) for i, r in enumerate(results) if r[0] in ("crash", "wrong")][:5]
    assert not bad, bad
    assert outcomes["rejected"] > CASES // 2 and outcomes["valid"] > CASES // 20, outcomes
    by_kind = Counter(k for o, k, _ in results if o == "rejected")
    assert set(by_kind) == set(KINDS), by_kind  # every mutation kind found something to reject
    valid = Counter(k for o, k, _ in results if o == "valid")
    assert valid["flip_payload"] > 0, valid  # a flipped value bit can be a valid update
