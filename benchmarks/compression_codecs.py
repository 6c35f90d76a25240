"""Codec micro-benchmark: bytes and encode+decode time of each chain on a 1M-value vector.

What is measured, per chain (``--chains``; the defaults cover every codec):

* ``nbytes``: the encoded update's size on the wire (``Encoded.nbytes``: framing, JSON header
  and payload), and ``ratio``: float32 bytes (4 per value) over it;
* ``encode_ms`` / ``decode_ms``: medians over ``--repeats`` runs of ``Chain.encode`` (with a
  fresh seeded generator and, for sparsifiers, a warm error-feedback state) and
  ``Chain.decode`` of the bytes (all checks on);
* ``rel_error``: ``||decode(encode(x)) - x|| / ||x||``, what the lossy ones cost per round
  (before error feedback gives the rest back later);
* times relative to two references measured in the same process, so they hold on another
  machine: a float32 copy of the same vector (``x.clone()``) and one SGD step (batch 10,
  forward, backward, update) of the FedAvg paper's MNIST CNN (1.66M parameters).

The vector is standard normal float32: its mantissas are noise, so ``zstd`` gains little on
raw or cast values; it gains on what has structure (delta-coded indices, low-bit codes).

    .venv/bin/python benchmarks/compression_codecs.py [--numel 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import median, print_headlines, write_results

from fedloom.compression import Chain, CodecState
from fedloom.models import build_model
from fedloom.seeding import derive_seed

CHAINS = [
    "f32",
    "fp16",
    "bf16",
    "q8",
    "q4",
    "q8,zstd",
    "q2,zstd",
    "topk:0.01",
    "topk:0.01,zstd",
    "topk:0.01,q8,zstd",
    "randk:0.01",
    "randk:0.05,fp16",
    "zstd",
]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``fn`` over ``repeats`` runs (after one warm-up), and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times), out


def sgd_step_ms(repeats: int) -> tuple[float, int]:
    """One SGD step of the FedAvg CNN on a batch of 10 MNIST-shaped images; its size."""
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xb, yb = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    ms, _ = timed(step, repeats * 3)
    return ms, sum(p.numel() for p in model.parameters())


def measure(items: list[str], x: torch.Tensor, repeats: int) -> dict[str, Any]:
    chain = Chain.parse(items)
    state = CodecState()
    chain.encode(x, state, torch.Generator().manual_seed(1))  # a warm residual
    saved = state.state_dict()

    def encode() -> Any:
        state.load_state_dict(saved)
        g = torch.Generator().manual_seed(derive_seed(0, "compress", 1, 0))
        return chain.encode(x, state, g)

    enc_ms, enc = timed(encode, repeats)
    data = enc.to_bytes()
    dec_ms, y = timed(lambda: chain.decode(data, x.numel()), repeats)
    fresh = Chain.parse(items).encode(x, CodecState(), torch.Generator().manual_seed(2))
    y = chain.decode(fresh.to_bytes(), x.numel())
    return {
        "chain": chain.specs,
        "nbytes": enc.nbytes,
        "ratio": 4 * x.numel() / enc.nbytes,
        "encode_ms": enc_ms,
        "decode_ms": dec_ms,
        "rel_error": float((y - x).norm() / x.norm()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chains", default=";".join(CHAINS), help="';'-separated, items by ','")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.numel, generator=torch.Generator().manual_seed(0))
    copy_ms, _ = timed(x.clone, args.repeats * 3)
    step_ms, cnn_params = sgd_step_ms(args.repeats)
    rows = {}
    for spec in args.chains.split(";"):
        row = measure(spec.split(","), x, args.repeats)
        both = row["encode_ms"] + row["decode_ms"]
        row["codec_vs_copy"] = both / copy_ms
        row["codec_vs_sgd_step"] = both / step_ms
        rows[spec] = row
        print(
            f"{spec:22s} {row['nbytes']:>9d} B  x{row['ratio']:7.2f}  "
            f"enc {row['encode_ms']:7.2f} ms  dec {row['decode_ms']:7.2f} ms  "
            f"err {row['rel_error']:.2e}  = {row['codec_vs_sgd_step']:.2f} SGD steps",
            flush=True,
        )
    results = {
        "numel": args.numel,
        "repeats": args.repeats,
        "float32_copy_ms": copy_ms,
        "cnn_sgd_step_ms": step_ms,
        "cnn_params": cnn_params,
        "chains": rows,
    }
    path = write_results("compression_codecs", results)
    print(f"results: {path}")
    heads: dict[str, Any] = {"float32_copy_ms": copy_ms, "cnn_sgd_step_ms": step_ms}
    for spec, row in rows.items():
        key = spec.replace(",", "+")
        heads[f"ratio[{key}]"] = row["ratio"]
        heads[f"codec_ms[{key}]"] = row["encode_ms"] + row["decode_ms"]
        heads[f"codec_vs_sgd_step[{key}]"] = row["codec_vs_sgd_step"]
    print_headlines(heads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
