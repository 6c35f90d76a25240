"""SecAgg+ against plain FedAvg, whole rounds with real local training, simulated and over loopback.

The issue's row: the cost of a SecAgg+ round against a plain FedAvg round with 100 and 500
clients of a 1M-parameter model. The model is an MLP 784-680-680-10 (1,003,690 parameters);
MNIST's 60k training images are split IID over the n clients (600 each at n = 100, 120 at
n = 500); every client trains one local epoch (batch 10, lr 0.05) in both kinds of round, so
the two differ only in how updates reach the aggregator. All clients take part in every round.

* simulation: a :class:`~fedloom.Federation` on the in-process engine (every client trains in
  this process, one after the other, one torch thread), with ``FedAvg(weighted=False)``
  against ``Staged(FedAvg(weighted=False), [SecureAggregation(clipping_range=C)])``, which
  runs the whole protocol among the n clients and the server every round. The time of a
  round is the sum of every party's compute. After round 1 the two models' largest
  difference is reported (within one quantisation step where no delta reached the clip).
* protocol split: one extra protocol run at the same n and d, driven stage by stage, timing
  the clients' calls and the server's calls apart: a client's own cost per round, and the
  aggregator's. With a core per client (a deployment) a round takes about one client's
  training, then one client's protocol cost and the aggregator's (the plain aggregation,
  timed apart, and the server's protocol work), not the sum over all clients;
  ``parallel_ratio`` is that estimate against one client's training plus the aggregation.
* processes: an :class:`~fedloom.runtime.AggregatorServer` (gRPC on 127.0.0.1) in this
  process, with or without ``secagg=SecAggSettings(...)``, and the n clients as
  :class:`~fedloom.runtime.RuntimeClient` threads spread over ``--procs`` client processes
  (this script with ``--worker``; a process per client would need n copies of torch and
  MNIST). Each client downloads the model, trains, and uploads its update (plain) or runs the
  four SecAgg+ stages over the ``SecAgg`` call (secure). Each client process reports its
  threads' CPU seconds (``time.thread_time``: training with transfers, and the protocol
  session apart) and the protocol's bytes (protobuf sizes of every SecAgg request and reply);
  the aggregator's CPU seconds per round are this process's.

Memory: the client processes inherit the environment; with ``MALLOC_ARENA_MAX=2`` a process
of 25 clients at 1M parameters peaked at 1.0 GB (plain) and 1.9 GB (secure) instead of 4.5 GB
(glibc's per-thread arenas). 500 clients over processes would still need tens of GB.

On a 2-core machine every party's compute is serialised, so the measured ratio is the total
protocol work over the total training work; ``parallel_ratio`` is what a core per client
would see. Round times exclude evaluation (none until the end) and a warm-up round.

Writes ``benchmarks/results/privacy_secagg_net.json`` (``..._quick.json`` with ``--quick``,
or ``--out``); ends with ``name: value`` lines. :func:`measure` is the entry for
``benchmarks/privacy.py``.

    .venv/bin/python benchmarks/privacy_secagg_net.py                    # n = 100, 500 (~15 min)
    .venv/bin/python benchmarks/privacy_secagg_net.py --net-clients 100  # processes at 100 only
    .venv/bin/python benchmarks/privacy_secagg_net.py --quick            # a smoke test, ~30 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from common import median, mnist_root, print_headlines, write_results

import fedloom
from fedloom import ClassificationTask, FedAvg, Federation, ParamSpec
from fedloom.data.partition.iid import IID
from fedloom.privacy import Staged
from fedloom.privacy.secagg import SecAggClient, SecAggServer, SecureAggregation, client_seed
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.secagg_client import SecAggSession
from fedloom.runtime.secagg_round import SecAggSettings
from fedloom.update import ClientUpdate

HIDDEN = 680  # 784-680-680-10: 1,003,690 parameters
CLIP = 0.5  # SecAgg's clipping range per coordinate of a delta
WORKER_TIMEOUT_S = 3600.0


# -- the task --------------------------------------------------------------------------------
def make_task(n: int, hidden: int, samples: int | None, seed: int = 0) -> ClassificationTask:
    """MNIST (its first ``samples`` training images, or all) split IID over ``n`` clients; an
    MLP with two hidden layers of ``hidden``; one local epoch, batch 10. The same in every
    process."""
    data = fedloom.load_mnist(mnist_root())
    labels = data.train_y.numpy()[:samples]
    parts = IID(n).split(labels, np.random.default_rng(seed))
    model = partial(fedloom.build_model, "mlp", tuple(data.input_shape), 10, hidden=hidden)
    return ClassificationTask(model, data, parts, lr=0.05, batch_size=10, local_epochs=1)


def secure_stage() -> SecureAggregation:
    return SecureAggregation(clipping_range=CLIP)


# -- simulation ------------------------------------------------------------------------------
def simulate(n: int, secure: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Round times of one federation on the in-process engine (warm-up rounds excluded)."""
    task = make_task(n, args.hidden, args.samples, args.seed)
    inner = FedAvg(clients_per_round=n, weighted=False)
    strategy = Staged(inner, [secure_stage()]) if secure else inner
    fed = Federation(task, strategy, rounds=10**6, seed=args.seed, eval_every=10**6)
    seconds, cpu, records, after_first = [], [], [], None
    for rnd in range(1, args.warmup + args.rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        record = fed.run_round(rnd)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        records.append(record)
        if rnd == 1:
            after_first = fed.params.clone()
    timed = seconds[args.warmup :]
    out: dict[str, Any] = {
        "round_seconds": seconds,
        "median_round_s": median(timed),
        "round_cpu_s": cpu,
        "median_round_cpu_s": median(cpu[args.warmup :]),
        "client_train_s_mean": float(
            np.mean([np.mean(list(r["client_seconds"].values())) for r in records[args.warmup :]])
        ),
        "clients": records[-1]["clients"],
        "after_round_1": after_first,
        "model_bytes": 4 * fed.params.numel(),
    }
    if secure:
        last = records[-1]
        out.update(
            {k: last[k] for k in last if k.startswith("secagg_") and k != "secagg_aborted"}
        )
    return out


def protocol_split(n: int, d: int, seed: int) -> dict[str, float]:
    """One protocol run driven stage by stage: the clients' CPU seconds (mean per client,
    and the slowest) and the server's, each party's calls timed apart (``thread_time``, so
    other processes on the machine do not count). Values do not change the cost, so every
    client feeds the same random delta."""
    cfg = secure_stage().protocol_config(n, d, round=1)
    delta = np.random.default_rng(seed).normal(0, 0.01, d).astype(np.float32)
    spent = np.zeros(n)
    server_s = 0.0

    def client(i: int, call: Any) -> Any:
        t0 = time.thread_time()
        message = call()
        spent[i] += time.thread_time() - t0
        return message

    def serve(call: Any) -> Any:
        nonlocal server_s
        t0 = time.thread_time()
        result = call()
        server_s += time.thread_time() - t0
        return result

    clients = [SecAggClient(cfg, i, client_seed(b"split", 1, i)) for i in range(n)]
    server = SecAggServer(cfg)
    for i, c in enumerate(clients):
        m = client(i, c.advertise)
        serve(lambda m=m: server.receive(m))
    for stage in ("share_keys", "masked_input", "unmask"):
        close = {
            "share_keys": server.broadcast_keys,
            "masked_input": server.forward_shares,
            "unmask": server.request_unmask,
        }[stage]
        for i, reply in serve(close).items():
            if stage == "masked_input":
                m = client(i, lambda c=clients[i], r=reply: c.masked_input(r, delta))
            else:
                m = client(i, lambda c=clients[i], r=reply, s=stage: getattr(c, s)(r))
            serve(lambda m=m: server.receive(m))
    serve(server.unmask)
    return {
        "client_s_mean": float(spent.mean()),
        "client_s_max": float(spent.max()),
        "server_s": server_s,
        "num_shares": cfg.num_shares,
        "parameters": d,
    }


def plain_aggregation_cpu(n: int, d: int) -> float:
    """CPU seconds of FedAvg's aggregation of n updates of d parameters (what a plain round
    does after training), through the strategy API; the best of three."""
    updates = [torch.randn(d) for _ in range(n)]
    best = math.inf
    for _ in range(3):
        strategy = FedAvg(clients_per_round=n, weighted=False)
        strategy.configure(1, list(range(n)), np.random.default_rng(0))
        batch = iter([ClientUpdate(i, u.clone(), 1) for i, u in enumerate(updates)])
        model = torch.zeros(d)
        t0 = time.thread_time()
        strategy.aggregate(1, model, batch)
        best = min(best, time.thread_time() - t0)
    return best


def simulation_row(n: int, args: argparse.Namespace) -> dict[str, Any]:
    plain = simulate(n, False, args)
    secure = simulate(n, True, args)
    diff = float((plain.pop("after_round_1") - secure.pop("after_round_1")).abs().max())
    split = protocol_split(n, plain["model_bytes"] // 4, args.seed)
    # a core per client: one client's training, then the aggregator's serial part (FedAvg's
    # sum; with SecAgg also the server's protocol work, after a client's protocol work)
    aggregate_s = plain_aggregation_cpu(n, int(split["parameters"]))
    train = max(0.0, plain["median_round_cpu_s"] - aggregate_s) / n
    parallel_plain = train + aggregate_s
    parallel_secure = parallel_plain + split["client_s_mean"] + split["server_s"]
    row = {
        "clients": n,
        "parameters": plain["model_bytes"] // 4,
        "plain": plain,
        "secure": secure,
        "ratio": secure["median_round_s"] / plain["median_round_s"],
        "cpu_ratio": secure["median_round_cpu_s"] / plain["median_round_cpu_s"],
        "max_abs_model_diff_after_round_1": diff,
        "quantisation_step": 2 * CLIP / (2**16 - 1),
        "protocol_split": split,
        "plain_aggregation_cpu_s": aggregate_s,
        "client_train_cpu_s": train,
        "parallel_round_s_plain": parallel_plain,
        "parallel_round_s_secure": parallel_secure,
        "parallel_ratio": parallel_secure / parallel_plain,
    }
    log(
        f"simulation n={n}: plain {plain['median_round_s']:.2f} s, secure "
        f"{secure['median_round_s']:.2f} s (x{row['ratio']:.2f}; CPU x{row['cpu_ratio']:.2f}); "
        f"a client's protocol "
        f"{split['client_s_mean'] * 1e3:.1f} ms, the server's {split['server_s']:.2f} s, "
        f"training {train:.3f} s a client: x{row['parallel_ratio']:.2f} with a core per client"
    )
    return row


# -- processes -------------------------------------------------------------------------------
class TimedSession(SecAggSession):
    """A client's protocol session that counts its thread's CPU seconds and its bytes."""

    spent: ClassVar[dict[str, float]] = {"cpu_s": 0.0, "sessions": 0, "up": 0, "down": 0}
    lock = threading.Lock()

    def __init__(self, call: Any, *rest: Any, **kwargs: Any):
        def counted(request: pb.SecAggRequest) -> pb.SecAggReply:
            reply: pb.SecAggReply = call(request)
            with self.lock:
                self.spent["up"] += cast(Any, request).ByteSize()
                self.spent["down"] += cast(Any, reply).ByteSize()
            return reply

        super().__init__(counted, *rest, **kwargs)

    def run(self, delta: Any) -> bool:
        t0 = time.thread_time()
        try:
            return super().run(delta)
        finally:
            with self.lock:
                self.spent["cpu_s"] += time.thread_time() - t0
                self.spent["sessions"] += 1


class TimedClient(RuntimeClient):
    """A runtime client whose rounds (download, training, upload or protocol) are timed in
    its thread's CPU seconds."""

    spent: ClassVar[dict[str, float]] = {"cpu_s": 0.0, "rounds": 0}
    lock = threading.Lock()

    def _train(self, ins: pb.Instruction) -> None:
        t0 = time.thread_time()
        try:
            super()._train(ins)
        finally:
            with self.lock:
                self.spent["cpu_s"] += time.thread_time() - t0
                self.spent["rounds"] += 1


def worker_main(args: argparse.Namespace) -> None:
    """A client process: one RuntimeClient thread per id until STOP; prints a JSON summary."""
    watchdog = threading.Timer(WORKER_TIMEOUT_S, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    torch.set_num_threads(1)
    task = make_task(args.clients, args.hidden, args.samples, args.seed)
    errors: list[str] = []

    def run(cid: int) -> None:
        try:
            client = TimedClient(task, args.worker, cid, retry_for=60)
            client.secagg_session = TimedSession
            client.run()
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            errors.append(f"client {cid}: {type(e).__name__}: {e}")

    lo, _, hi = args.worker_ids.partition("-")
    threads = [threading.Thread(target=run, args=(c,), daemon=True)
               for c in range(int(lo), int(hi) + 1)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(WORKER_TIMEOUT_S)
    report = {
        "clients": len(threads),
        "errors": errors[:5],
        "train": TimedClient.spent,
        "secagg": TimedSession.spent,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("WORKER " + json.dumps(report), flush=True)
    os._exit(0)  # threads blocked in gRPC must not keep the process alive


def over_processes(n: int, secure: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Round times of a federation over a loopback aggregator and ``--procs`` client
    processes."""
    task = make_task(n, args.hidden, args.samples, args.seed)
    settings = SecAggSettings(clipping_range=CLIP, stage_timeout=300.0) if secure else None
    box: list[AggregatorServer] = []

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(spec, address="127.0.0.1:0", min_clients=n, round_timeout=900.0,
                                  heartbeat_timeout=300.0, secagg=settings)  # fmt: skip
        box.append(server)
        return server.start()

    inner = FedAvg(clients_per_round=n, weighted=False)
    fed = Federation(task, inner, make, rounds=10**6, seed=args.seed, eval_every=10**6)
    server = box[0]
    procs = start_workers(server.address, n, args)
    reports: list[dict[str, Any]] = []
    try:
        seconds, cpu, records = [], [], []
        for rnd in range(1, args.warmup + args.rounds + 1):
            c0, t0 = process_cpu(), time.perf_counter()
            records.append(fed.run_round(rnd))
            seconds.append(time.perf_counter() - t0)
            cpu.append(process_cpu() - c0)
            log(f"  processes n={n} {'secure' if secure else 'plain'}: round {rnd} "
                f"{seconds[-1]:.2f} s")  # fmt: skip
        server.finish()
        for p in procs:
            text, _ = p.communicate(timeout=120)
            reports += [json.loads(line[7:]) for line in text.splitlines()
                        if line.startswith("WORKER ")]  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        server.stop(0)
    errors = [e for r in reports for e in r["errors"]]
    rounds_total = args.warmup + args.rounds
    client_cpu = sum(r["train"]["cpu_s"] for r in reports) / max(1, n * rounds_total)
    proto_cpu = sum(r["secagg"]["cpu_s"] for r in reports) / max(1, n * rounds_total)
    timed = seconds[args.warmup :]
    bytes_down = records[-1]["bytes_down"] / n  # the model's download
    out: dict[str, Any] = {
        "round_seconds": seconds,
        "median_round_s": median(timed),
        "aggregator_cpu_s_per_round": median(cpu[args.warmup :]),
        "client_cpu_s_per_round": client_cpu,  # download, training, upload or protocol
        "client_protocol_cpu_s_per_round": proto_cpu,
        "bytes_down_per_client": bytes_down,
        "bytes_up_per_client": records[-1]["bytes_up"] / n,
        "client_peak_rss_mb": max((r["peak_rss_mb"] for r in reports), default=None),
        "client_errors": errors[:5],
    }
    if secure:
        sessions = sum(r["secagg"]["sessions"] for r in reports)
        up = sum(r["secagg"]["up"] for r in reports) / max(1, sessions)
        down = sum(r["secagg"]["down"] for r in reports) / max(1, sessions)
        out.update(bytes_up_per_client=up, bytes_down_per_client=bytes_down + down,
                   protocol_bytes_down_per_client=down)  # fmt: skip
    return out


def processes_row(n: int, args: argparse.Namespace) -> dict[str, Any]:
    plain = over_processes(n, False, args)
    secure = over_processes(n, True, args)
    train = plain["client_cpu_s_per_round"]
    parallel_plain = train + plain["aggregator_cpu_s_per_round"]
    parallel_secure = secure["client_cpu_s_per_round"] + secure["aggregator_cpu_s_per_round"]
    row = {
        "clients": n,
        "client_procs": min(args.procs, n),
        "plain": plain,
        "secure": secure,
        "ratio": secure["median_round_s"] / plain["median_round_s"],
        "cpu_ratio": (n * secure["client_cpu_s_per_round"] + secure["aggregator_cpu_s_per_round"])
        / (n * train + plain["aggregator_cpu_s_per_round"]),
        "parallel_ratio": parallel_secure / parallel_plain,
    }
    log(
        f"processes n={n}: plain {plain['median_round_s']:.2f} s, secure "
        f"{secure['median_round_s']:.2f} s (x{row['ratio']:.2f}); client CPU per round "
        f"{train:.3f} s plain, {secure['client_cpu_s_per_round']:.3f} s secure (protocol "
        f"{secure['client_protocol_cpu_s_per_round']:.3f} s); aggregator CPU "
        f"{plain['aggregator_cpu_s_per_round']:.2f} / {secure['aggregator_cpu_s_per_round']:.2f} s"
    )
    return row


def start_workers(address: str, n: int, args: argparse.Namespace) -> list[subprocess.Popen[str]]:
    per = math.ceil(n / min(args.procs, n))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", address, "--clients", str(n),
           "--hidden", str(args.hidden), "--seed", str(args.seed)]  # fmt: skip
    if args.samples is not None:
        cmd += ["--samples", str(args.samples)]
    ids = [f"{lo}-{min(lo + per, n) - 1}" for lo in range(0, n, per)]
    pipe = subprocess.PIPE
    return [subprocess.Popen([*cmd, "--worker-ids", i], stdout=pipe, text=True, env=env)
            for i in ids]  # fmt: skip


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- entry points ----------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="6 and 12 clients, a tiny model")
    p.add_argument("--sim-clients", default="100,500", help="client counts in simulation")
    p.add_argument("--net-clients", default="100,500", help="client counts over processes")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per contender")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--samples", type=int, default=None, help="use the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="the JSON file (default: benchmarks/results)")
    p.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--worker-ids", help=argparse.SUPPRESS)
    p.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    return p


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every row ``args`` asks for; the results and the headline lines."""
    torch.set_num_threads(1)
    sim = [simulation_row(n, args) for n in counts(args.sim_clients)]
    net = [processes_row(n, args) for n in counts(args.net_clients)]
    heads: dict[str, Any] = {}
    for kind, rows in (("sim", sim), ("net", net)):
        for r in rows:
            n = r["clients"]
            heads[f"secagg_{kind}_n{n}_plain_round_s"] = r["plain"]["median_round_s"]
            heads[f"secagg_{kind}_n{n}_secure_round_s"] = r["secure"]["median_round_s"]
            heads[f"secagg_{kind}_n{n}_ratio"] = r["ratio"]
            heads[f"secagg_{kind}_n{n}_cpu_ratio"] = r["cpu_ratio"]
            heads[f"secagg_{kind}_n{n}_parallel_ratio"] = r["parallel_ratio"]
            sec = r["secure"]
            up = sec.get("bytes_up_per_client", sec.get("secagg_bytes_up_per_client"))
            down = sec.get("bytes_down_per_client", sec.get("secagg_bytes_down_per_client"))
            heads[f"secagg_{kind}_n{n}_bytes_up_per_client"] = int(up)
            heads[f"secagg_{kind}_n{n}_bytes_down_per_client"] = int(down)
    results = {"quick": args.quick, "hidden": args.hidden, "clip": CLIP, "rounds": args.rounds,
               "warmup": args.warmup, "simulation": sim, "processes": net}  # fmt: skip
    return {"results": results, "headlines": heads}


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    """The rows for command-line options ``argv`` (e.g. ``["--quick"]``), without writing a
    file: ``{"results": ..., "headlines": {name: value}}``. What ``benchmarks/privacy.py``
    calls."""
    args = parser().parse_args(argv)
    if args.quick:
        args.sim_clients, args.net_clients, args.procs = "6,12", "6", 1
        args.hidden, args.samples, args.rounds, args.warmup = 32, 600, 1, 1
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    out = measure(argv)
    name = "privacy_secagg_net_quick" if args.quick else "privacy_secagg_net"
    if args.out:
        path = Path(args.out)
        path.write_text(json.dumps(out["results"], indent=2) + "\n")
    else:
        path = write_results(name, out["results"])
    print_headlines({**out["headlines"], "results": str(path)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
