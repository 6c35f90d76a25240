"""Per-client state at scale: SCAFFOLD over 10,000 clients, all states in memory vs. a budget.

What is measured: seconds per round, the process's peak RSS and the spill counters of
:class:`fedloom.simulation.states.ClientStates`, for the same run done twice, each in its own
subprocess (so each has its own peak RSS):

* ``unlimited``: ``InProcessClients(task, seed)``, every client's state kept in memory;
* ``budget``: ``InProcessClients(task, seed, state_memory_mb=256)``, the least recently used
  states past 256 MiB spilled to a temporary directory and read back when needed.

Setup: 10,000 clients x 6 samples of random data (60 features, 10 classes; the data does not
matter here, only its size), the FedAvg paper's MLP 60-200-200-10 (54,410 parameters, so a
SCAFFOLD control variate ``c_i`` is 218 KB and 10,000 of them 2.2 GB), SCAFFOLD (option II),
1,000 clients per round, E=1, B=10, lr 0.01. Cohorts are drawn as sweeps: each run of
``clients / per-round`` rounds visits every client once, in a random order (so after the
first 10 rounds every client holds state); the rounds after that revisit clients whose states
were spilled, which measures reading them back. Default: 12 rounds (10 filling, 2 revisiting).
No evaluation, checkpoints or callbacks in the timed rounds; one intra-op torch thread.

The two runs train the same clients on the same data from the same seed, and spilling is
exact, so their final models must be bit-identical: the SHA-256 of each final parameter
buffer is printed and compared.

    .venv/bin/python benchmarks/client_state.py [--rounds 12] [--clients 10000]
        [--per-round 1000] [--budget-mb 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import median, peak_rss_mb, print_headlines, rss_mb, write_results

import fedloom
from fedloom.algorithms.base import RoundPlan
from fedloom.algorithms.scaffold import Scaffold

FEATURES, CLASSES, PER_CLIENT = 60, 10, 6


class SweepScaffold(Scaffold):
    """SCAFFOLD whose cohorts sweep the clients: every ``N / k`` rounds visit each client once
    (a fresh random order per sweep), so that a short run gives every client state."""

    def __init__(self, *args: Any, sweep_seed: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sweep_seed = sweep_seed

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        plan = super().configure(round, available, rng)
        k = len(plan.clients)
        per_sweep = max(1, len(available) // k)
        sweep, slot = divmod(round - 1, per_sweep)
        order = np.random.default_rng([self.sweep_seed, sweep]).permutation(np.asarray(available))
        plan.clients = sorted(int(c) for c in order[slot * k : (slot + 1) * k])
        return plan


def random_dataset(clients: int, seed: int) -> tuple[fedloom.TensorDataset, list[np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    n = clients * PER_CLIENT
    x = torch.randn(n + 1000, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n + 1000,), generator=g)
    ds = fedloom.TensorDataset("random", x[:n], y[:n], x[n:], y[n:], CLASSES)
    parts = [np.arange(i * PER_CLIENT, (i + 1) * PER_CLIENT) for i in range(clients)]
    return ds, parts


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One run (this process is a child of :func:`main`): the rounds, their times, RSS."""
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget = args.memory_mb
    ds, parts = random_dataset(args.clients, args.seed)
    task = fedloom.ClassificationTask(
        partial(fedloom.build_model, "mlp", (FEATURES,), CLASSES),
        ds,
        parts,
        lr=0.01,
        batch_size=10,
        local_epochs=1,
    )
    backend = fedloom.InProcessClients(task, args.seed, state_memory_mb=budget)
    fed = fedloom.Federation(
        task,
        SweepScaffold(clients_per_round=args.per_round, sweep_seed=args.seed),
        backend,
        rounds=10**6,
        seed=args.seed,
        eval_every=10**6,
    )
    fed.callbacks = []
    states = backend.states
    rss_setup = rss_mb()
    seconds, per_round = [], []
    for rnd in range(1, args.rounds + 1):
        before = dict(states.stats())
        t0 = time.perf_counter()
        fed.run_round(rnd)
        seconds.append(time.perf_counter() - t0)
        now = states.stats()
        per_round.append(
            {
                "round": rnd,
                "seconds": seconds[-1],
                "rss_mb": rss_mb(),
                "states": now["states"],
                "in_memory": now["in_memory"],
                "on_disk": now["on_disk"],
                "spilled": now["spilled"] - before["spilled"],
                "loaded": now["loaded"] - before["loaded"],
            }
        )
        print(
            f"  [{'unlimited' if budget is None else f'{budget:g} MiB'}] round {rnd:2d}: "
            f"{seconds[-1]:.2f} s, RSS {per_round[-1]['rss_mb']:.0f} MB, "
            f"{now['states']} states ({now['in_memory']} in memory, {now['on_disk']} on disk), "
            f"spilled {per_round[-1]['spilled']}, loaded {per_round[-1]['loaded']}",
            file=sys.stderr,
            flush=True,
        )
    stats = states.stats()
    files = sum(e.stat().st_size for e in os.scandir(states.path)) if states.path else 0
    digest = hashlib.sha256(fed.params.numpy().tobytes()).hexdigest()
    fill = min(args.rounds, max(1, args.clients // args.per_round))
    result = {
        "state_memory_mb": budget,
        "params": fed.spec.numel,
        "state_bytes_per_client": fed.spec.numel * 4,
        "seconds_per_round": {
            "median": median(seconds),
            "median_filling": median(seconds[:fill]),
            "median_revisiting": median(seconds[fill:]) if seconds[fill:] else None,
            "all": seconds,
        },
        "rss_mb_after_setup": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "states": stats,
        "spill_file_bytes": files,
        "rounds": per_round,
        "params_sha256": digest,
    }
    states.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--budget-mb", type=float, default=256.0, help="the budgeted run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--memory-mb", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.clients, args.per_round) < 1 or args.per_round > args.clients:
        parser.error("need rounds, clients >= 1 and 1 <= per-round <= clients")
    if args.child_out:  # a child: run one variant, hand the result back as JSON
        Path(args.child_out).write_text(json.dumps(run_variant(args)))
        return 0

    t_start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {args.clients} clients, "
        f"{args.per_round} per round, {args.rounds} rounds, SCAFFOLD, MLP 60-200-200-10",
        flush=True,
    )
    variants: dict[str, Any] = {}
    common = [
        f"--{k}={v}"
        for k, v in (
            ("rounds", args.rounds),
            ("clients", args.clients),
            ("per-round", args.per_round),
            ("seed", args.seed),
            ("threads", args.threads),
        )
    ]
    for name, budget in (("unlimited", None), ("budget", args.budget_mb)):
        with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, __file__, *common, f"--child-out={out}"]
            if budget is not None:
                cmd.append(f"--memory-mb={budget}")
            subprocess.run(cmd, check=True)
            res = variants[name] = json.loads(out.read_text())
        s = res["seconds_per_round"]
        revisit = s["median_revisiting"]
        print(
            f"{name}: {s['median']:.2f} s/round (median; filling {s['median_filling']:.2f}, "
            f"revisiting {'-' if revisit is None else f'{revisit:.2f}'}), peak RSS "
            f"{res['peak_rss_mb']:.0f} MB (after setup {res['rss_mb_after_setup']:.0f}), "
            f"states {res['states']['states']}, spilled {res['states']['spilled']}, loaded "
            f"{res['states']['loaded']}, spill files {res['spill_file_bytes'] / 1e6:.0f} MB",
            flush=True,
        )
    a, b = variants["unlimited"], variants["budget"]
    identical = a["params_sha256"] == b["params_sha256"]
    print(f"final models bit-identical: {identical} ({a['params_sha256'][:16]})", flush=True)
    setup = {
        "clients": args.clients,
        "samples_per_client": PER_CLIENT,
        "clients_per_round": args.per_round,
        "rounds": args.rounds,
        "model": "mlp 60-200-200-10",
        "strategy": "scaffold (option II), sweep cohorts",
        "local_epochs": 1,
        "batch_size": 10,
        "lr": 0.01,
        "budget_mb": args.budget_mb,
        "seed": args.seed,
        "total_seconds": time.perf_counter() - t_start,
    }
    path = write_results(
        "client_state",
        {"setup": setup, "unlimited": a, "budget": b, "bit_identical": identical},
    )
    print(f"results: {path}  (total {setup['total_seconds']:.0f} s)")

    def revisit(res: dict[str, Any]) -> str:
        v = res["seconds_per_round"]["median_revisiting"]
        return "null" if v is None else f"{v:.3f}"

    print_headlines(
        {
            "client_state_round_seconds_unlimited": f"{a['seconds_per_round']['median']:.3f}",
            "client_state_round_seconds_budget": f"{b['seconds_per_round']['median']:.3f}",
            "client_state_revisit_round_seconds_unlimited": revisit(a),
            "client_state_revisit_round_seconds_budget": revisit(b),
            "client_state_peak_rss_mb_unlimited": f"{a['peak_rss_mb']:.0f}",
            "client_state_peak_rss_mb_budget": f"{b['peak_rss_mb']:.0f}",
            "client_state_spilled": b["states"]["spilled"],
            "client_state_loaded": b["states"]["loaded"],
            "client_state_bit_identical": str(identical).lower(),
        }
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
