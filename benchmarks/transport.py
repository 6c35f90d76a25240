"""Network runtime on loopback: model transfer throughput and the aggregator at 200 clients.

Part 1, transfer. A ~100 MB float32 model (``nn.Linear(5000, 5000)``: 100.02 MB of values plus a
small safetensors header) is moved through the real :class:`AggregatorServer` over gRPC on
127.0.0.1, in both directions, and compared with a raw TCP copy of the same bytes:

* download: after a CheckIn and ``server.distribute`` (untimed; it encodes the model once per
  round), the clock runs from ``stub.Download(...)`` through ``join_chunks`` to ``decode`` (the
  spec/NaN checks included), i.e. until the client holds the checked flat tensor;
* download via the client's path: the same, but the stream goes through
  ``RuntimeClient._call``, which materialises it with ``list()`` inside its retry (what a real
  data holder does);
* upload: the clock runs from the client's ``encode`` through the streamed ``Upload`` until the
  ``UploadReply`` arrives; the server joins the chunks, decodes and checks them before replying,
  and the reply is asserted to be ``accepted`` (each upload gets a fresh round, untimed);
* bulk download / upload (fedloom's default path): the same two transfers over the
  aggregator's bulk port (:mod:`fedloom.runtime.bulk`) through the client's own
  ``_bulk_download``/``_bulk_upload``: connect, authorise, raw bytes received straight into the
  client's reused buffer (download; ``decode`` with its checks is in the clock) or the
  server's fresh one (upload; the server decodes and checks before it replies);
* raw TCP: a receiver thread ``recv_into``s a preallocated bytearray, the sender ``sendall``s
  the encoded model on an already connected socket; the clock stops when the last byte is in;
* bare gRPC: gRPC's own ceiling in this setting, a server stream of pre-sliced ``bytes`` (1 MiB)
  with identity serializers, drained by a client that only counts them (no protobuf, no
  fedloom code, no receive buffer): what fedloom's transfers could reach at best over grpcio.

Server and client live in this one process (as the raw copy's two ends do), so Python work on
either side shares one GIL; the raw copy releases it in ``recv_into``/``sendall``. Each figure is
the median of ``--repeats`` timed transfers after one untimed warm-up; every repeat runs every
contender once (interleaved, so load from other processes hits all alike) and the ``*_vs_raw``
ratios are medians of the ratios within a repeat. MB is 10^6 bytes. Chunk sizes 256 KiB, 1 MiB
(fedloom's default) and 4 MiB are tried; the headline is the default, the best is reported
beside it. To show where time goes, each step (stream+join, decode, encode) is timed
separately, the peak RSS growth of each transfer is recorded, and so are the costs of one copy
of the model's bytes into a touched buffer and of one fresh zeroed buffer of its size (page
faults: on some VMs these cost more than the copy).

Part 2, rounds at scale. An aggregator (min_clients = ``--clients``) runs in this process; the
clients run as ``RuntimeClient`` threads in ``--client-procs`` separate processes (this script
with ``--worker``), so the aggregator's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before the phase) is its own. The task is logistic regression on a
small synthetic dataset (20 samples per client, batch 20: one local step). A
:class:`Federation` with ``FedAvg(clients_per_round=clients)`` runs ``--rounds`` rounds over the
server, then a second one with ``FedAvg(clients_per_round=--small-cohort)`` over the same
connected clients. Reported: median round seconds, aggregator CPU seconds per round, Poll RPCs
per second, and peak RSS of the aggregator and of the client processes. On a 2-core machine the
client processes compete with the aggregator for the CPU, as they would on any shared host.

    .venv/bin/python benchmarks/transport.py [--model-mb 100] [--repeats 5]
        [--chunk-kib 256,1024,4096] [--clients 200] [--client-procs 4] [--rounds 5]
        [--small-cohort 10] [--skip-transfer] [--skip-rounds]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import torch
from common import median, print_headlines, write_results
from torch import nn

import fedloom
from fedloom import ClassificationTask, FedAvg, Federation, ParamSpec, RoundPlan, TensorDataset
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.runtime.gate import identity_metadata
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.proto import fedloom_pb2_grpc as pb_grpc
from fedloom.runtime.transport import DEFAULT_CHUNK, GRPC_OPTIONS, encode_chunks, join_chunks
from fedloom.wire import decode, encode, encode_parts

MB = 1e6
TASK_ID = "bench"
TARGET_RATIO = 0.5
# Synthetic task of part 2: per client SAMPLES rows of FEATURES features, CLASSES classes.
FEATURES, CLASSES, SAMPLES, TEST_SAMPLES = 20, 3, 20, 200
WORKER_TIMEOUT_S = 240.0  # a client process ends itself after this, whatever happens


# -- process memory ----------------------------------------------------------------------------
def proc_status_mb(field: str) -> float | None:
    """``VmRSS``/``VmHWM`` of this process in MB, from /proc/self/status (None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (VmHWM), else since the process began."""
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- part 1: transfer --------------------------------------------------------------------------
def big_spec(model_mb: float) -> ParamSpec:
    """Spec of ``nn.Linear(n, n)`` float32 with n chosen so the model holds ~``model_mb`` MB."""
    n = max(1, round(math.sqrt(model_mb * MB / 4)))
    with torch.device("meta"):  # only the spec is needed: no 100 MB of random init
        layer = nn.Linear(n, n)
    return ParamSpec.from_module(layer)


def time_memory(nbytes: int, repeats: int) -> tuple[float, float]:
    """Median seconds of (one copy of ``nbytes`` into a touched buffer, one fresh zeroed
    ``bytearray(nbytes)``): what each extra copy and each fresh model-sized buffer costs."""
    src, dst = bytearray(nbytes), bytearray(nbytes)  # zero-filled: every page is touched
    copies, allocs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst[:] = src
        t1 = time.perf_counter()
        fresh = bytearray(nbytes)
        t2 = time.perf_counter()
        del fresh
        copies.append(t1 - t0)
        allocs.append(t2 - t1)
    return median(copies), median(allocs)


class RawTCP:
    """A loopback TCP receiver thread that ``recv_into``s a preallocated bytearray."""

    def __init__(self, nbytes: int):
        self.buf = bytearray(nbytes)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]

    def transfer(self, payload: bytes) -> float:
        """Seconds from the first ``sendall`` byte to the last byte received."""
        n, done = len(payload), {}

        def receive() -> None:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(30)
                view, pos = memoryview(self.buf), 0
                while pos < n:
                    got = conn.recv_into(view[pos:])
                    if got == 0:
                        break
                    pos += got
                done["t1"], done["bytes"] = time.perf_counter(), pos

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sender:
            t0 = time.perf_counter()
            sender.sendall(payload)
            receiver.join(60)
        if done.get("bytes") != n:
            raise RuntimeError(f"raw TCP copy moved {done.get('bytes')} of {n} bytes")
        return done["t1"] - t0

    def close(self) -> None:
        self.listener.close()


class BareGrpc:
    """gRPC's own ceiling: a server stream of pre-sliced ``bytes`` with identity serializers
    (no protobuf, no fedloom code), drained by a client that only counts the bytes."""

    def __init__(self, payload: bytes, chunk_size: int):
        pieces = [payload[s : s + chunk_size] for s in range(0, len(payload), chunk_size)]
        self.nbytes = len(payload)
        handler = grpc.method_handlers_generic_handler(
            "bench.Bare",
            {"Stream": grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(pieces))},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        self.call = self.channel.unary_stream("/bench.Bare/Stream")

    def transfer(self) -> float:
        t0, n = time.perf_counter(), 0
        for piece in self.call(b"", timeout=120):
            n += len(piece)
        dt = time.perf_counter() - t0
        if n != self.nbytes:
            raise RuntimeError(f"bare gRPC stream moved {n} of {self.nbytes} bytes")
        return dt

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


class FedloomEnd:
    """A real AggregatorServer with ``chunk_size`` and one checked-in client (id 0) on a stub."""

    def __init__(self, spec: ParamSpec, params: torch.Tensor, chunk_size: int):
        self.spec, self.params, self.chunk_size = spec, params, chunk_size
        self.server = AggregatorServer(
            spec, task_id=TASK_ID, address="127.0.0.1:0", chunk_size=chunk_size
        ).start()
        self.channel = grpc.insecure_channel(self.server.address, options=GRPC_OPTIONS)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self.md = identity_metadata(TASK_ID, 0, "")  # every call names its client
        reply = self.stub.CheckIn(
            pb.CheckInRequest(task_id=TASK_ID, client_id="0", num_samples=1),
            timeout=30,
            metadata=self.md,
        )
        assert reply.accepted and reply.chunk_size == chunk_size, reply
        self.limit = spec.nbytes + (1 << 20)
        self.round = 0
        self.request = self.next_round()
        # RuntimeClient's retry wrapper over the generated stub (protobuf messages).
        self.client = RuntimeClient(None, self.server.address, 0, task_id=TASK_ID)  # type: ignore[arg-type]
        self.client.stub = self.stub
        self.client.bulk_port = self.server.bulk.port if self.server.bulk else 0
        # the raw-chunk calls RuntimeClient makes (data copied once each way)
        self.raw_download = self.channel.unary_stream(
            "/fedloom.v1.Aggregator/Download",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )
        self.raw_upload = self.channel.stream_unary(
            "/fedloom.v1.Aggregator/Upload",
            request_serializer=None,
            response_deserializer=pb.UploadReply.FromString,
        )

    def next_round(self) -> pb.DownloadRequest:
        """Untimed: a fresh round (server.distribute encodes the model) for client 0."""
        self.round += 1
        self.server.distribute(self.round, RoundPlan([0]), self.params)
        self.request = pb.DownloadRequest(
            task_id=TASK_ID, client_id="0", round=self.round, version=self.round - 1
        )
        return self.request

    def download(self, check: bool) -> tuple[float, float, float]:
        """(total, stream+join, decode) seconds of the client's raw Download -> join -> decode."""
        t0 = time.perf_counter()
        _, data = join_chunks(
            self.raw_download(self.request, timeout=120, metadata=self.md), self.limit
        )
        t1 = time.perf_counter()
        got, _ = decode(data, self.spec, copy=False)
        t2 = time.perf_counter()
        if check and not torch.equal(got, self.params):
            raise RuntimeError("downloaded model differs from the one distributed")
        return t2 - t0, t1 - t0, t2 - t1

    def bulk_download(self, check: bool) -> float:
        """Seconds of the client's bulk download into its reused buffer, then ``decode``."""
        ins = pb.Instruction(round=self.request.round, version=self.request.version)
        t0 = time.perf_counter()
        data = self.client._bulk_download(ins, self.limit)
        if data is None:
            raise RuntimeError("bulk download fell back to gRPC")
        got, _ = decode(data, self.spec, copy=False)
        dt = time.perf_counter() - t0
        if check and not torch.equal(got, self.params):
            raise RuntimeError("bulk-downloaded model differs from the one distributed")
        return dt

    def bulk_upload(self, check: bool) -> float:
        """Seconds of encode + the client's bulk upload until the server accepted it."""
        self.next_round()
        ins = pb.Instruction(round=self.round, version=self.round - 1)
        t0 = time.perf_counter()
        parts = encode_parts(self.params, self.spec, {"round": self.round})
        reply = self.client._bulk_upload(ins, parts, 1, {})
        dt = time.perf_counter() - t0
        if reply is None or not reply.accepted:
            raise RuntimeError(f"bulk upload failed: {reply}")
        if check and not torch.equal(self.server._results[0].params, self.params):
            raise RuntimeError("bulk-uploaded model differs from the one sent")
        self.server._results.clear()
        return dt

    def download_client_path(self) -> float:
        """Through protobuf messages on the generated stub (what a non-fedloom client does)."""
        t0 = time.perf_counter()
        download = lambda r: self.stub.Download(r, metadata=self.md)  # noqa: E731
        _, data = join_chunks(self.client._call(download, self.request), self.limit)
        decode(data, self.spec, copy=False)
        return time.perf_counter() - t0

    def upload(self, check: bool) -> tuple[float, float]:
        """(total, encode) seconds of encode + streamed Upload until an accepted reply."""
        self.next_round()
        rnd = self.round
        t0 = time.perf_counter()
        payload = encode(self.params, self.spec, {"round": rnd})
        t1 = time.perf_counter()
        chunks = encode_chunks(
            payload,
            self.chunk_size,
            task_id=TASK_ID,
            client_id="0",
            round=rnd,
            version=rnd - 1,
            num_samples=1,
            metrics_json="{}",
        )
        answer = self.raw_upload(chunks, timeout=120, metadata=self.md)
        t2 = time.perf_counter()
        if not answer.accepted:
            raise RuntimeError(f"upload refused: {answer.reason}")
        if check and not torch.equal(self.server._results[0].params, self.params):
            raise RuntimeError("uploaded model differs from the one sent")
        self.server._results.clear()  # drop the 100 MB update before the next measurement
        return t2 - t0, t1 - t0

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


def measured(fn: Callable[[], Any], peaks: dict[str, float], key: str) -> Any:
    """Run ``fn``; record in ``peaks[key]`` the largest RSS growth above the RSS before it."""
    reset = reset_peak_rss()
    base = proc_status_mb("VmRSS")
    out = fn()
    if reset and base is not None:
        peaks[key] = max(peaks.get(key, 0.0), peak_rss_mb() - base)
    return out


def summary(times: list[float], nbytes: int, **parts: list[float]) -> dict[str, Any]:
    s = median(times)
    out: dict[str, Any] = {"median_s": s, "mb_s": nbytes / MB / s, "times_s": times}
    for name, values in parts.items():
        out[name] = median(values)
    return out


def run_transfer(args: argparse.Namespace) -> dict[str, Any]:
    spec = big_spec(args.model_mb)
    params = torch.randn(spec.numel, generator=torch.Generator().manual_seed(0))
    payload = encode(params, spec, {"round": 1, "version": 0})
    nbytes = len(payload)
    log(
        f"transfer: {spec} = {nbytes / MB:.1f} MB on the wire; chunks {args.chunk_kib} KiB; "
        f"{args.repeats} interleaved repeats after a warm-up"
    )
    memcpy_s, alloc_s = time_memory(nbytes, args.repeats)
    raw = RawTCP(nbytes)
    default_kib = DEFAULT_CHUNK // 1024
    bare = BareGrpc(payload, DEFAULT_CHUNK)
    ends = {kib: FedloomEnd(spec, params, kib * 1024) for kib in args.chunk_kib}
    t: dict[str, list[float]] = {"raw": [], "bare": []}
    peaks: dict[str, float] = {}
    for kib in ends:
        for k in ("down", "down_join", "down_decode", "client", "up", "up_encode", "bd", "bu"):
            t[f"{k}_{kib}"] = []
    try:
        # Every repeat runs every contender once, so load from other processes (this is a
        # shared machine) hits all alike; ratios are also taken within each repeat.
        for rep in range(args.repeats + 1):
            warm = rep == 0
            row = {"raw": raw.transfer(payload), "bare": bare.transfer()}
            for kib, end in ends.items():
                d = measured(
                    lambda end=end, warm=warm: end.download(warm), peaks, f"download_{kib}"
                )
                row[f"down_{kib}"], row[f"down_join_{kib}"], row[f"down_decode_{kib}"] = d
                row[f"client_{kib}"] = measured(
                    end.download_client_path, peaks, f"download_client_path_{kib}"
                )
                u = measured(lambda end=end, warm=warm: end.upload(warm), peaks, f"upload_{kib}")
                row[f"up_{kib}"], row[f"up_encode_{kib}"] = u
                row[f"bd_{kib}"] = measured(
                    lambda end=end, warm=warm: end.bulk_download(warm), peaks, f"bulk_down_{kib}"
                )
                row[f"bu_{kib}"] = measured(
                    lambda end=end, warm=warm: end.bulk_upload(warm), peaks, f"bulk_up_{kib}"
                )
            if not warm:
                for k, v in row.items():
                    t[k].append(v)
            log(
                f"  {'warm-up' if warm else f'repeat {rep}'}: raw {nbytes / MB / row['raw']:.0f}"
                f", bare gRPC {nbytes / MB / row['bare']:.0f}, "
                + ", ".join(
                    f"{kib} KiB down {nbytes / MB / row[f'down_{kib}']:.0f} "
                    f"up {nbytes / MB / row[f'up_{kib}']:.0f} "
                    f"bulk down {nbytes / MB / row[f'bd_{kib}']:.0f} "
                    f"up {nbytes / MB / row[f'bu_{kib}']:.0f}"
                    for kib in ends
                )
                + " MB/s"
            )
    finally:
        for end in ends.values():
            end.close()
        bare.close()
        raw.close()

    raw_mb_s = nbytes / MB / median(t["raw"])
    by_chunk: dict[str, Any] = {}
    for kib in ends:
        ratio = lambda k, kib=kib: median([r / x for r, x in zip(t["raw"], t[f"{k}_{kib}"])])  # noqa: E731
        by_chunk[str(kib)] = {
            "download": summary(
                t[f"down_{kib}"],
                nbytes,
                stream_join_s=t[f"down_join_{kib}"],
                decode_s=t[f"down_decode_{kib}"],
            )
            | {"vs_raw_paired": ratio("down"), "peak_rss_growth_mb": peaks.get(f"download_{kib}")},
            "download_client_path": summary(t[f"client_{kib}"], nbytes)
            | {"peak_rss_growth_mb": peaks.get(f"download_client_path_{kib}")},
            "upload": summary(t[f"up_{kib}"], nbytes, encode_s=t[f"up_encode_{kib}"])
            | {"vs_raw_paired": ratio("up"), "peak_rss_growth_mb": peaks.get(f"upload_{kib}")},
            "bulk_download": summary(t[f"bd_{kib}"], nbytes)
            | {"vs_raw_paired": ratio("bd"), "peak_rss_growth_mb": peaks.get(f"bulk_down_{kib}")},
            "bulk_upload": summary(t[f"bu_{kib}"], nbytes)
            | {"vs_raw_paired": ratio("bu"), "peak_rss_growth_mb": peaks.get(f"bulk_up_{kib}")},
        }
        b = by_chunk[str(kib)]
        d, c, u = b["download"], b["download_client_path"], b["upload"]
        log(
            f"  chunk {kib:5d} KiB: download {d['mb_s']:5.0f} MB/s (stream+join "
            f"{d['stream_join_s'] * 1e3:.0f} ms, decode {d['decode_s'] * 1e3:.0f} ms, peak RSS "
            f"+{d['peak_rss_growth_mb'] or 0:.0f} MB); client path {c['mb_s']:5.0f} MB/s (+"
            f"{c['peak_rss_growth_mb'] or 0:.0f} MB); upload {u['mb_s']:5.0f} MB/s (encode "
            f"{u['encode_s'] * 1e3:.0f} ms, +{u['peak_rss_growth_mb'] or 0:.0f} MB)"
        )
    bare_mb_s = nbytes / MB / median(t["bare"])
    log(
        f"  raw TCP {raw_mb_s:.0f} MB/s; bare gRPC bytes stream ({default_kib} KiB) "
        f"{bare_mb_s:.0f} MB/s; one copy of the model {memcpy_s * 1e3:.0f} ms, one fresh "
        f"zeroed buffer of its size {alloc_s * 1e3:.0f} ms"
    )
    default = by_chunk.get(str(default_kib)) or next(iter(by_chunk.values()))
    best_down = max(by_chunk, key=lambda k: by_chunk[k]["download"]["mb_s"])
    best_up = max(by_chunk, key=lambda k: by_chunk[k]["upload"]["mb_s"])
    return {
        "model": {"spec": repr(spec), "wire_bytes": nbytes, "mb": nbytes / MB},
        "raw_tcp": summary(t["raw"], nbytes),
        "bare_grpc": summary(t["bare"], nbytes)
        | {
            "chunk_kib": default_kib,
            "vs_raw_paired": median([r / x for r, x in zip(t["raw"], t["bare"])]),
        },
        "memcpy_s": memcpy_s,
        "fresh_buffer_s": alloc_s,
        "by_chunk_kib": by_chunk,
        "default_chunk_kib": default_kib,
        "grpc_download_mb_s": default["download"]["mb_s"],
        "grpc_download_client_path_mb_s": default["download_client_path"]["mb_s"],
        "grpc_upload_mb_s": default["upload"]["mb_s"],
        "raw_tcp_mb_s": raw_mb_s,
        "bare_grpc_mb_s": bare_mb_s,
        "grpc_download_vs_raw": default["download"]["vs_raw_paired"],
        "grpc_upload_vs_raw": default["upload"]["vs_raw_paired"],
        # the bulk channel does not chunk: every chunk size's figure measures the same path
        "bulk_download_mb_s": median([b["bulk_download"]["mb_s"] for b in by_chunk.values()]),
        "bulk_upload_mb_s": median([b["bulk_upload"]["mb_s"] for b in by_chunk.values()]),
        "download_vs_raw": median([b["bulk_download"]["vs_raw_paired"] for b in by_chunk.values()]),
        "upload_vs_raw": median([b["bulk_upload"]["vs_raw_paired"] for b in by_chunk.values()]),
        "best_download_chunk_kib": int(best_down),
        "best_download_mb_s": by_chunk[best_down]["download"]["mb_s"],
        "best_upload_chunk_kib": int(best_up),
        "best_upload_mb_s": by_chunk[best_up]["upload"]["mb_s"],
        "target_ratio": TARGET_RATIO,
    }


# -- part 2: rounds with many clients ----------------------------------------------------------
def synthetic_task(num_clients: int) -> ClassificationTask:
    """Logistic regression on a learnable synthetic problem; identical in every process."""
    g = torch.Generator().manual_seed(0)
    n = num_clients * SAMPLES
    centers = torch.randn(CLASSES, FEATURES, generator=g) * 2
    y = torch.randint(0, CLASSES, (n + TEST_SAMPLES,), generator=g)
    x = centers[y] + torch.randn(n + TEST_SAMPLES, FEATURES, generator=g)
    data = TensorDataset("synthetic", x[:n], y[:n], x[n:], y[n:], CLASSES)
    parts = [torch.arange(i * SAMPLES, (i + 1) * SAMPLES) for i in range(num_clients)]
    return ClassificationTask(
        lambda: nn.Linear(FEATURES, CLASSES), data, parts, lr=0.1, batch_size=SAMPLES
    )


def worker_main(address: str, ids: list[int], num_clients: int) -> None:
    """A client process: one RuntimeClient thread per id until STOP; prints a JSON summary."""
    watchdog = threading.Timer(WORKER_TIMEOUT_S, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    task = synthetic_task(num_clients)
    rounds: dict[int, int] = {}
    errors: list[str] = []

    def run(cid: int) -> None:
        try:
            rounds[cid] = RuntimeClient(task, address, cid, task_id=TASK_ID, retry_for=30).run()
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            errors.append(f"client {cid}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(cid,), daemon=True) for cid in ids]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    report = {
        "clients": len(ids),
        "rounds_trained": sum(rounds.values()),
        "unfinished": sum(t.is_alive() for t in threads),
        "errors": errors[:5],
        "peak_rss_mb": peak_rss_mb(),
        "cpu_s": cpu_seconds(),
    }
    print("WORKER " + json.dumps(report), flush=True)
    os._exit(0)  # threads still blocked in gRPC must not keep the process alive


class CountingServer(AggregatorServer):
    """The real aggregator, counting Poll RPCs (one increment per call; nothing else changes)."""

    polls = 0

    def Poll(self, request, context):
        self.polls += 1
        return super().Poll(request, context)


def start_workers(address: str, args: argparse.Namespace) -> list[subprocess.Popen]:
    procs = []
    ids = list(range(args.clients))
    per = math.ceil(args.clients / args.client_procs)
    for start in range(0, args.clients, per):
        chunk = ids[start : start + per]
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            address,
            "--worker-ids",
            f"{chunk[0]}-{chunk[-1]}",
            "--clients",
            str(args.clients),
        ]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # stderr: ours
        )
    return procs


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def run_phase(fed: Federation, server: CountingServer, cohort: int, warmup: int) -> dict[str, Any]:
    """Run ``fed`` to the end; round times exclude the first ``warmup`` rounds."""
    polls0, cpu0, wall0 = server.polls, cpu_seconds(), time.perf_counter()
    reset_peak_rss()
    result = fed.run()
    wall = time.perf_counter() - wall0
    all_secs = [r["seconds"] for r in result.history]
    clients = [r["clients"] for r in result.history]
    if any(c != cohort for c in clients):
        raise RuntimeError(f"rounds aggregated {clients} updates, expected {cohort} each")
    secs = all_secs[warmup:]
    out = {
        "clients_per_round": cohort,
        "rounds_timed": len(secs),
        "warmup_rounds": warmup,
        "round_seconds": all_secs,
        "median_round_s": median(secs),
        "max_round_s": max(secs),
        "aggregator_cpu_s_per_round": (cpu_seconds() - cpu0) / len(all_secs),
        "polls_per_s": (server.polls - polls0) / wall,
        "aggregator_peak_rss_mb": peak_rss_mb(),
        "final_accuracy": result.final_metrics.get("accuracy"),
    }
    log(
        f"  {cohort:3d} of {len(server.members)} clients per round: median round "
        f"{out['median_round_s']:.3f} s {[round(s, 3) for s in all_secs]}, aggregator CPU "
        f"{out['aggregator_cpu_s_per_round']:.2f} s/round, {out['polls_per_s']:.0f} polls/s, "
        f"peak RSS {out['aggregator_peak_rss_mb']:.0f} MB"
    )
    return out


def run_rounds(args: argparse.Namespace) -> dict[str, Any]:
    log(
        f"rounds: {args.clients} clients in {args.client_procs} processes, {args.rounds} rounds, "
        f"cohorts {args.clients} and {args.small_cohort}, {os.cpu_count()} CPUs"
    )
    task = synthetic_task(args.clients)
    reset_peak_rss()
    rss_before = proc_status_mb("VmRSS")
    server_box: list[CountingServer] = []

    def make_server(spec: ParamSpec) -> CountingServer:
        server = CountingServer(
            spec,
            task_id=TASK_ID,
            address="127.0.0.1:0",
            min_clients=args.clients,
            round_timeout=60.0,
        ).start()
        server_box.append(server)
        return server

    fed = Federation(
        task,
        FedAvg(clients_per_round=args.clients),
        backend=make_server,
        rounds=args.rounds + 1,  # + a warm-up round (torch's lazy imports in every client)
    )
    server = server_box[0]
    procs = start_workers(server.address, args)
    workers: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        wait_for(lambda: len(server.members) >= args.clients, 120, f"{args.clients} check-ins")
        checkin_s = time.perf_counter() - t0
        log(f"  {args.clients} clients checked in after {checkin_s:.1f} s")
        rss_idle, checkin_peak = proc_status_mb("VmRSS"), peak_rss_mb()
        full = run_phase(fed, server, args.clients, warmup=1)
        fed_small = Federation(
            task, FedAvg(clients_per_round=args.small_cohort), backend=server, rounds=args.rounds
        )
        small = run_phase(fed_small, server, min(args.small_cohort, args.clients), warmup=0)
        server.finish()
        for p in procs:  # clients hear STOP at their next poll and exit
            try:
                text, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate(timeout=10)
            workers += [
                json.loads(line[len("WORKER ") :])
                for line in text.splitlines()
                if line.startswith("WORKER ")
            ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        server.stop(0)
    errors = [e for w in workers for e in w["errors"]]
    if errors:
        log(f"  client errors: {errors[:5]}")
    out = {
        "clients": args.clients,
        "client_procs": args.client_procs,
        "cpu_count": os.cpu_count(),
        "checkin_s": checkin_s,
        "aggregator_rss_before_server_mb": rss_before,
        "aggregator_rss_clients_connected_mb": rss_idle,
        "full_cohort": full,
        "small_cohort": small,
        "vmhwm_reset": reset_peak_rss(),  # False: peaks count from the process start
        "aggregator_peak_rss_mb": max(
            checkin_peak, full["aggregator_peak_rss_mb"], small["aggregator_peak_rss_mb"]
        ),
        "client_processes": workers,
        "client_peak_rss_mb_per_process": median([w["peak_rss_mb"] for w in workers])
        if workers
        else None,
        "client_cpu_s_total": sum(w["cpu_s"] for w in workers),
    }
    log(
        f"  aggregator RSS {rss_before:.0f} MB before the server, {rss_idle:.0f} MB with "
        f"{args.clients} clients connected; client processes peak "
        f"{out['client_peak_rss_mb_per_process'] or 0:.0f} MB each"
    )
    return out


# -- main --------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def id_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-mb", type=float, default=100.0, help="model size in MB (10^6 B)")
    p.add_argument("--repeats", type=int, default=5, help="timed transfers per measurement")
    p.add_argument(
        "--chunk-kib",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[256, 1024, 4096],
        help="comma-separated chunk sizes in KiB (the default 1024 is the headline)",
    )
    p.add_argument("--clients", type=int, default=200, help="connected clients in part 2")
    p.add_argument("--client-procs", type=int, default=4, help="processes holding the clients")
    p.add_argument("--rounds", type=int, default=5, help="rounds per cohort size in part 2")
    p.add_argument("--small-cohort", type=int, default=10, help="the smaller clients_per_round")
    p.add_argument("--skip-transfer", action="store_true", help="skip part 1")
    p.add_argument("--skip-rounds", action="store_true", help="skip part 2")
    p.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--worker-ids", type=id_range, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG", "ERROR"),
        format="%(relativeCreated)8.0f %(threadName)s %(name)s %(message)s",
    )
    if args.worker:
        worker_main(args.worker, args.worker_ids, args.clients)
        return
    if args.repeats < 1 or args.rounds < 1 or args.clients < 1 or args.client_procs < 1:
        p.error("--repeats, --rounds, --clients and --client-procs must be >= 1")

    t0 = time.perf_counter()
    results: dict[str, Any] = {"fedloom": fedloom.__version__, "args": vars(args)}
    # Part 2 first: the aggregator's memory is then not inflated by part 1's 100 MB buffers
    # even where VmHWM cannot be reset.
    if not args.skip_rounds:
        results["rounds"] = run_rounds(args)
    if not args.skip_transfer:
        results["transfer"] = run_transfer(args)
    results["total_seconds"] = time.perf_counter() - t0
    path = write_results("transport", results)
    log(f"results: {path} ({results['total_seconds']:.0f} s)")

    heads: dict[str, Any] = {}
    if "transfer" in results:
        t = results["transfer"]
        heads.update(
            grpc_download_mb_s=f"{t['grpc_download_mb_s']:.0f}",
            grpc_download_client_path_mb_s=f"{t['grpc_download_client_path_mb_s']:.0f}",
            grpc_upload_mb_s=f"{t['grpc_upload_mb_s']:.0f}",
            raw_tcp_mb_s=f"{t['raw_tcp_mb_s']:.0f}",
            bare_grpc_mb_s=f"{t['bare_grpc_mb_s']:.0f}",
            grpc_download_vs_raw=f"{t['grpc_download_vs_raw']:.2f}",
            grpc_upload_vs_raw=f"{t['grpc_upload_vs_raw']:.2f}",
            bulk_download_mb_s=f"{t['bulk_download_mb_s']:.0f}",
            bulk_upload_mb_s=f"{t['bulk_upload_mb_s']:.0f}",
            download_vs_raw=f"{t['download_vs_raw']:.2f}",
            upload_vs_raw=f"{t['upload_vs_raw']:.2f}",
            best_download_chunk_kib=t["best_download_chunk_kib"],
            best_download_mb_s=f"{t['best_download_mb_s']:.0f}",
            best_upload_chunk_kib=t["best_upload_chunk_kib"],
            best_upload_mb_s=f"{t['best_upload_mb_s']:.0f}",
        )
    if "rounds" in results:
        r = results["rounds"]
        n, k = r["clients"], r["small_cohort"]["clients_per_round"]
        heads[f"round_seconds_{n}_clients"] = f"{r['full_cohort']['median_round_s']:.3f}"
        heads[f"round_seconds_{k}_of_{n}_clients"] = f"{r['small_cohort']['median_round_s']:.3f}"
        heads["aggregator_peak_rss_mb"] = f"{r['aggregator_peak_rss_mb']:.0f}"
        heads[f"aggregator_cpu_s_per_round_{n}_clients"] = (
            f"{r['full_cohort']['aggregator_cpu_s_per_round']:.2f}"
        )
        heads[f"aggregator_polls_per_s_{k}_of_{n}_clients"] = (
            f"{r['small_cohort']['polls_per_s']:.0f}"
        )
    print_headlines(heads)


if __name__ == "__main__":
    main()
