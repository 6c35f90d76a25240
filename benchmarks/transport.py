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
* raw TCP: a receiver thread ``recv_into``s a preallocated bytearray, the sender ``sendall``s
  the encoded model on an already connected socket; the clock stops when the last byte is in.

Server and client live in this one process (as the raw copy's two ends do), so Python work on
either side shares one GIL; the raw copy releases it in ``recv_into``/``sendall``. Each figure is
the median of ``--repeats`` timed transfers after one untimed warm-up; MB is 10^6 bytes. Chunk
sizes 256 KiB, 1 MiB (fedloom's default) and 4 MiB are tried; the headline is the default, the
best is reported beside it. The time of each step (stream+join, decode, encode) is recorded
separately, along with the cost of one plain 100 MB memory copy, to show where time goes.

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
from typing import Any

import grpc
import torch
from common import median, print_headlines, write_results
from torch import nn

import fedloom
from fedloom import ClassificationTask, FedAvg, Federation, ParamSpec, RoundPlan, TensorDataset
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.proto import fedloom_pb2_grpc as pb_grpc
from fedloom.runtime.transport import DEFAULT_CHUNK, GRPC_OPTIONS, iter_chunks, join_chunks
from fedloom.wire import decode, encode

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


def time_memcpy(nbytes: int, repeats: int) -> float:
    """Median seconds of one plain copy of ``nbytes`` (bytearray slice assignment)."""
    src, dst = bytearray(nbytes), bytearray(nbytes)
    src[::4096] = b"\1" * len(src[::4096])  # touch the pages so the copy does not fault them in
    dst[::4096] = b"\1" * len(dst[::4096])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst[:] = src
        times.append(time.perf_counter() - t0)
    return median(times)


def raw_tcp(payload: bytes, repeats: int) -> list[float]:
    """Seconds to move ``payload`` over a connected loopback TCP socket, per repeat (+1 warm-up)."""
    n = len(payload)
    buf = bytearray(n)
    times: list[float] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        port = listener.getsockname()[1]
        for i in range(repeats + 1):
            done: dict[str, Any] = {}

            def receive(done: dict[str, Any] = done) -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(30)
                    view, pos = memoryview(buf), 0
                    while pos < n:
                        got = conn.recv_into(view[pos:])
                        if got == 0:
                            break
                        pos += got
                    done["t1"], done["bytes"] = time.perf_counter(), pos

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sender:
                t0 = time.perf_counter()
                sender.sendall(payload)
                receiver.join(60)
            if done.get("bytes") != n:
                raise RuntimeError(f"raw TCP copy moved {done.get('bytes')} of {n} bytes")
            if i:  # the first is a warm-up
                times.append(done["t1"] - t0)
    if buf != payload:
        raise RuntimeError("raw TCP copy corrupted the bytes")
    return times


def grpc_transfers(
    spec: ParamSpec, params: torch.Tensor, chunk_size: int, repeats: int
) -> dict[str, Any]:
    """Download and upload ``params`` through a real AggregatorServer with ``chunk_size``."""
    server = AggregatorServer(
        spec, task_id=TASK_ID, address="127.0.0.1:0", chunk_size=chunk_size
    ).start()
    channel = grpc.insecure_channel(server.address, options=GRPC_OPTIONS)
    try:
        stub = pb_grpc.AggregatorStub(channel)
        reply = stub.CheckIn(
            pb.CheckInRequest(task_id=TASK_ID, client_id="0", num_samples=1), timeout=30
        )
        assert reply.accepted and reply.chunk_size == chunk_size
        limit = spec.nbytes + (1 << 20)
        out: dict[str, Any] = {"chunk_size": chunk_size}

        # Download: the stub's stream straight into join_chunks, then decode.
        server.distribute(1, RoundPlan([0]), params)
        request = pb.DownloadRequest(task_id=TASK_ID, client_id="0", round=1, version=0)
        total, join_s, decode_s = [], [], []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            head, data = join_chunks(stub.Download(request, timeout=120), limit)
            t1 = time.perf_counter()
            got, _ = decode(data, spec)
            t2 = time.perf_counter()
            if i == 0:  # warm-up; check the bytes once
                assert torch.equal(got, params), "downloaded model differs"
                out["wire_bytes"] = len(data)
                continue
            total.append(t2 - t0)
            join_s.append(t1 - t0)
            decode_s.append(t2 - t1)
            del head, data, got
        nbytes = out["wire_bytes"]
        out["download"] = summary(total, nbytes, stream_join_s=join_s, decode_s=decode_s)

        # Download the way RuntimeClient does it: _call -> _retry, which list()s the stream.
        client = RuntimeClient(None, server.address, 0, task_id=TASK_ID, retry_for=30)  # type: ignore[arg-type]
        client.stub = stub
        total = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            _, data = join_chunks(client._call(stub.Download, request), limit)
            got, _ = decode(data, spec)
            if i:
                total.append(time.perf_counter() - t0)
            del data, got
        out["download_client_path"] = summary(total, nbytes)

        # Upload: encode + streamed Upload until the reply; the server decodes and checks it.
        total, encode_s = [], []
        for i in range(repeats + 1):
            rnd = 2 + i
            server.distribute(rnd, RoundPlan([0]), params)  # a fresh round for each upload
            t0 = time.perf_counter()
            payload = encode(params, spec, {"round": rnd})
            t1 = time.perf_counter()
            chunks = iter_chunks(
                payload,
                reply.chunk_size,
                task_id=TASK_ID,
                client_id="0",
                round=rnd,
                version=rnd - 1,
                num_samples=1,
                metrics_json="{}",
            )
            answer = stub.Upload(chunks, timeout=120)
            t2 = time.perf_counter()
            if not answer.accepted:
                raise RuntimeError(f"upload refused: {answer.reason}")
            if i == 0:
                assert torch.equal(server._results[0].params, params), "uploaded model differs"
                continue
            total.append(t2 - t0)
            encode_s.append(t1 - t0)
            del payload
        out["upload"] = summary(total, nbytes, encode_s=encode_s)
        return out
    finally:
        channel.close()
        server.stop(0)


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
    log(f"transfer: model {spec} = {nbytes / MB:.1f} MB on the wire, {args.repeats} repeats")

    raw = raw_tcp(payload, args.repeats)
    raw_s = median(raw)
    log(f"  raw TCP: {nbytes / MB / raw_s:7.0f} MB/s ({raw_s * 1e3:.0f} ms)")
    memcpy_s = time_memcpy(nbytes, args.repeats)
    log(f"  one memcpy of the model: {memcpy_s * 1e3:.0f} ms ({nbytes / MB / memcpy_s:.0f} MB/s)")
    del payload

    by_chunk: dict[str, Any] = {}
    for kib in args.chunk_kib:
        reset_peak_rss()
        base = proc_status_mb("VmRSS")
        r = grpc_transfers(spec, params, kib * 1024, args.repeats)
        peak = peak_rss_mb()
        r["peak_rss_growth_mb"] = None if base is None else peak - base
        by_chunk[str(kib)] = r
        d, c, u = r["download"], r["download_client_path"], r["upload"]
        log(
            f"  gRPC chunk {kib:5d} KiB: download {d['mb_s']:6.0f} MB/s "
            f"(stream+join {d['stream_join_s'] * 1e3:.0f} ms, decode {d['decode_s'] * 1e3:.0f} ms)"
            f", via client {c['mb_s']:6.0f} MB/s, upload {u['mb_s']:6.0f} MB/s "
            f"(encode {u['encode_s'] * 1e3:.0f} ms), peak RSS +{r['peak_rss_growth_mb']:.0f} MB"
        )
    raw_mb_s = nbytes / MB / raw_s
    default_kib = str(DEFAULT_CHUNK // 1024)
    default = by_chunk.get(default_kib) or next(iter(by_chunk.values()))
    best_down = max(by_chunk, key=lambda k: by_chunk[k]["download"]["mb_s"])
    best_up = max(by_chunk, key=lambda k: by_chunk[k]["upload"]["mb_s"])
    return {
        "model": {"spec": repr(spec), "wire_bytes": nbytes, "mb": nbytes / MB},
        "raw_tcp": summary(raw, nbytes),
        "memcpy_s": memcpy_s,
        "by_chunk_kib": by_chunk,
        "default_chunk_kib": int(default_kib),
        "grpc_download_mb_s": default["download"]["mb_s"],
        "grpc_download_client_path_mb_s": default["download_client_path"]["mb_s"],
        "grpc_upload_mb_s": default["upload"]["mb_s"],
        "raw_tcp_mb_s": raw_mb_s,
        "download_vs_raw": default["download"]["mb_s"] / raw_mb_s,
        "upload_vs_raw": default["upload"]["mb_s"] / raw_mb_s,
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
        except Exception as e:  # reported to the parent, which decides
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

    def Poll(self, request, context):  # noqa: N802 (gRPC's method names)
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
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    return procs


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def run_phase(fed: Federation, server: CountingServer, cohort: int) -> dict[str, Any]:
    polls0, cpu0, wall0 = server.polls, cpu_seconds(), time.perf_counter()
    reset_peak_rss()
    result = fed.run()
    wall = time.perf_counter() - wall0
    secs = [r["seconds"] for r in result.history]
    clients = [r["clients"] for r in result.history]
    if any(c != cohort for c in clients):
        raise RuntimeError(f"rounds aggregated {clients} updates, expected {cohort} each")
    out = {
        "clients_per_round": cohort,
        "rounds": len(secs),
        "round_seconds": secs,
        "median_round_s": median(secs),
        "median_round_s_after_first": median(secs[1:]) if len(secs) > 1 else secs[0],
        "aggregator_cpu_s_per_round": (cpu_seconds() - cpu0) / len(secs),
        "polls_per_s": (server.polls - polls0) / wall,
        "aggregator_peak_rss_mb": peak_rss_mb(),
        "final_accuracy": result.final_metrics.get("accuracy"),
    }
    log(
        f"  {cohort:3d} of {len(server.members)} clients per round: median round "
        f"{out['median_round_s']:.3f} s {[round(s, 3) for s in secs]}, aggregator CPU "
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
        task, FedAvg(clients_per_round=args.clients), backend=make_server, rounds=args.rounds
    )
    server = server_box[0]
    procs = start_workers(server.address, args)
    workers: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        wait_for(lambda: len(server.members) >= args.clients, 120, f"{args.clients} check-ins")
        checkin_s = time.perf_counter() - t0
        log(f"  {args.clients} clients checked in after {checkin_s:.1f} s")
        rss_idle = proc_status_mb("VmRSS")
        full = run_phase(fed, server, args.clients)
        fed_small = Federation(
            task, FedAvg(clients_per_round=args.small_cohort), backend=server, rounds=args.rounds
        )
        small = run_phase(fed_small, server, min(args.small_cohort, args.clients))
        server.finish()
        for p in procs:  # clients hear STOP at their next poll and exit
            try:
                text, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate(timeout=10)
            for line in text.splitlines():
                if line.startswith("WORKER "):
                    workers.append(json.loads(line[len("WORKER ") :]))
                elif "Error" in line or "Traceback" in line:
                    log(f"  worker: {line}")
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
        "aggregator_peak_rss_mb": max(full["aggregator_peak_rss_mb"], small["aggregator_peak_rss_mb"]),
        "client_processes": workers,
        "client_peak_rss_mb_per_process": median([w["peak_rss_mb"] for w in workers])
        if workers
        else None,
        "client_cpu_s_total": sum(w["cpu_s"] for w in workers),
    }
    log(
        f"  aggregator RSS {rss_before:.0f} MB before the server, {rss_idle:.0f} MB with "
        f"{args.clients} clients connected; client processes peak "
        f"{out['client_peak_rss_mb_per_process']} MB each"
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
    logging.basicConfig(level=logging.ERROR)
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
        heads["aggregator_polls_per_s"] = f"{r['full_cohort']['polls_per_s']:.0f}"
    print_headlines(heads)


if __name__ == "__main__":
    main()
