"""fedloom on one GPU: the W1 FedAvg workloads against a plain PyTorch loop, and a paper cell.

What is measured (one device, ``--device``, default ``cuda``):

1. **W1 workloads.** FedAvg rounds on MNIST, E=1, B=10, lr 0.05, for the FedAvg paper's CNN
   and 2NN (784-200-200-10): 100 IID clients of 40 samples with 20 per round, and the
   1,000 x 4 probe (1,000 clients of 4 samples, 100 per round). Three contenders, all on the
   device and starting from the same weights: a plain PyTorch loop (one model,
   ``load_state_dict`` per client, ``randperm`` on the device, a running weighted sum of the
   state dict: the best a hand-written loop does), fedloom's sequential engine and fedloom's
   vectorised engine. Rounds alternate between contenders (order flipped every round), each
   round ends with a device synchronisation, and medians are reported with the ratios to the
   plain loop: ``sequential_over_plain`` (target <= 1.05) and ``plain_over_vectorized``, the
   vectorised speed-up (targets: >= 10 on the 1,000 x 4 probe, >= 3 on the CNN at 20 per
   round). The sequential and vectorised engines train the same clients on the same
   batches, so the largest difference of their parameters is reported as a check.
2. **The paper cell.** The FedAvg paper's CNN on MNIST split into shards (non-IID, 2 shards
   of 300 per client, 100 clients), C=0.1, E=5, B=10, through ``fedloom``'s config path
   (``simulation.engine = "vectorized"``, ``train.device``), evaluated every round until 99%
   test accuracy (the paper: 229 rounds; target within 1.5x) or ``--max-rounds`` or
   ``--cell-budget-s``; rounds to 99% and seconds per round are reported.

Output: ``benchmarks/results/gpu.json`` (or ``--out``) and ``name: value`` lines at the end.
``--smoke`` runs every code path on the CPU in seconds (the embedded 5k MNIST, tiny cohorts,
two rounds): ``make test`` runs it (tests/test_device_benchmark.py).

    .venv/bin/python benchmarks/gpu.py                 # on a GPU, under 6 minutes
    .venv/bin/python benchmarks/gpu.py --smoke         # every path on the CPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, median, mnist_root, print_headlines, write_results
from torch import nn

import fedloom
from fedloom.accel import MixedPrecision, resolve_device
from fedloom.engines import VectorizedClients
from fedloom.seeding import derive_seed

LR, BATCH_SIZE, LOCAL_EPOCHS = 0.05, 10, 1
INPUT_SHAPE, NUM_CLASSES = (1, 28, 28), 10
PAPER_NONIID_ROUNDS = 229  # McMahan et al. 2017, Table 2, CNN, E=5, B=10, non-IID
TARGET_ACCURACY = 0.99


def workloads(smoke: bool) -> list[dict[str, Any]]:
    """(model, clients, samples each, per round) of the W1 runs; tiny cohorts for --smoke."""
    full = [(100, 40, 20), (1000, 4, 100)]
    small = [(10, 8, 4), (40, 4, 10)]
    sizes = small if smoke else full
    return [
        {"model": m, "clients": n, "samples": s, "per_round": k, "name": f"{m}_{n}x{s}"}
        for n, s, k in sizes
        for m in ("cnn", "mlp")
    ]


class PlainFedAvg:
    """FedAvg as a plain PyTorch loop on ``device``: nothing leaves the device."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        parts: Sequence[np.ndarray],
        per_round: int,
        seed: int,
        precision: str,
    ):
        self.model, self.x, self.y, self.per_round = model, x, y, per_round
        dev = x.device
        self.parts = [torch.as_tensor(p, dtype=torch.int64, device=dev) for p in parts]
        self.sizes = [len(p) for p in parts]
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.keys = [k for k, v in self.state.items() if v.is_floating_point()]
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.amp = MixedPrecision(precision, dev)

    def run_round(self) -> None:
        model = self.model
        clients = self.rng.choice(len(self.parts), size=self.per_round, replace=False)
        total = float(sum(self.sizes[c] for c in clients))
        running = {k: torch.zeros_like(self.state[k]) for k in self.keys}
        model.train()
        for c in clients:
            model.load_state_dict(self.state)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            amp = self.amp.fresh()
            idx = self.parts[c]
            for _ in range(LOCAL_EPOCHS):
                order = idx[torch.randperm(len(idx), generator=self.gen, device=idx.device)]
                for i in range(0, len(order), BATCH_SIZE):
                    b = order[i : i + BATCH_SIZE]
                    opt.zero_grad(set_to_none=True)
                    with amp.autocast():
                        loss = F.cross_entropy(model(self.x[b]), self.y[b])
                    amp.backward(loss)
                    amp.step(opt)
            state = model.state_dict()
            for k in self.keys:
                running[k].add_(state[k], alpha=self.sizes[c] / total)
        self.state.update(running)


def iid_parts(clients: int, samples: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(clients * samples)
    return [np.sort(p) for p in np.split(perm, clients)]


def bench_workload(
    w: dict[str, Any],
    data: fedloom.TensorDataset,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Warm up, then time alternating rounds of the three contenders; medians and ratios."""
    parts = iid_parts(w["clients"], w["samples"], args.seed)
    model_fn = partial(fedloom.build_model, w["model"], INPUT_SHAPE, NUM_CLASSES)

    def task() -> fedloom.ClassificationTask:
        return fedloom.ClassificationTask(
            model_fn,
            data,
            parts,
            lr=LR,
            batch_size=BATCH_SIZE,
            local_epochs=LOCAL_EPOCHS,
            device=device,
            precision=args.precision,
        )

    def federation(backend: Any = None, t: Any = None) -> fedloom.Federation:
        t = t if t is not None else task()
        strategy = fedloom.FedAvg(clients_per_round=w["per_round"])
        return fedloom.Federation(
            t, strategy, backend, rounds=10**6, seed=args.seed, eval_every=10**6
        )

    seq = federation()
    vtask = task()
    vec_engine = VectorizedClients(vtask, args.seed)
    vec = federation(vec_engine, vtask)
    torch.manual_seed(derive_seed(args.seed, "init"))
    plain_model = model_fn().to(device)
    x, y = data.train_x.to(device), data.train_y.to(device)
    plain = PlainFedAvg(plain_model, x, y, parts, w["per_round"], args.seed, args.precision)
    start = torch.cat([p.detach().reshape(-1) for p in plain_model.parameters()])
    if not torch.equal(seq.params, start):
        raise RuntimeError("fedloom and the plain loop do not start from the same weights")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rounds = {"sequential": 0, "vectorized": 0}

    def fed_round(name: str, fed: fedloom.Federation) -> Callable[[], None]:
        def run() -> None:
            rounds[name] += 1
            fed.run_round(rounds[name])

        return run

    contenders = {
        "plain": plain.run_round,
        "sequential": fed_round("sequential", seq),
        "vectorized": fed_round("vectorized", vec),
    }
    for _ in range(args.warmup):
        for fn in contenders.values():
            fn()
            sync()
    times: dict[str, list[float]] = {n: [] for n in contenders}
    names = list(contenders)
    for i in range(args.rounds):
        for n in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            contenders[n]()
            sync()
            times[n].append(time.perf_counter() - t0)
    med = {n: median(ts) for n, ts in times.items()}
    pair = {
        "sequential_over_plain": median(
            [s / p for s, p in zip(times["sequential"], times["plain"])]
        ),
        "plain_over_vectorized": median(
            [p / v for p, v in zip(times["plain"], times["vectorized"])]
        ),
    }
    out = {
        **w,
        "params": seq.spec.numel,
        "vectorized_path": vec_engine.path,
        "rounds_measured": args.rounds,
        "warmup_rounds": args.warmup,
        "seconds_per_round": med,
        "sequential_over_plain": med["sequential"] / med["plain"],
        "plain_over_vectorized": med["plain"] / med["vectorized"],
        "median_pair_ratios": pair,
        "vectorized_vs_sequential_max_abs_diff": float((vec.params - seq.params).abs().max()),
        "test_accuracy_after": {
            "sequential": seq.evaluate()["accuracy"],
            "vectorized": vec.evaluate()["accuracy"],
        },
    }
    print(
        f"{w['name']}: plain {med['plain'] * 1e3:.2f} ms, sequential {med['sequential'] * 1e3:.2f}"
        f" ms ({out['sequential_over_plain']:.2f}x), vectorized {med['vectorized'] * 1e3:.2f} ms"
        f" ({out['plain_over_vectorized']:.1f}x faster, {vec_engine.path}); "
        f"|vec - seq| {out['vectorized_vs_sequential_max_abs_diff']:.2g}",
        flush=True,
    )
    return out


class Budget(fedloom.Callback):
    """Stops the paper cell after ``seconds`` and keeps each round's wall time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = self.last = time.perf_counter()
        self.wall: list[float] = []

    def on_start(self, fed: fedloom.Federation) -> None:
        self.t0 = self.last = time.perf_counter()

    def on_round_end(self, fed: fedloom.Federation, record: dict[str, Any]) -> bool:
        now = time.perf_counter()
        self.wall.append(now - self.last)
        self.last = now
        return now - self.t0 > self.seconds


def paper_cell(device: torch.device, args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """The non-IID CNN cell through the config path, with the vectorised engine."""
    clients = 40 if args.smoke else 100
    dataset: dict[str, Any] = {"dataset": "mnist5k"}
    if not args.smoke:
        dataset = {"dataset": "mnist", "root": str(mnist_root(args.mnist_root))}
    cfg = {
        "name": "gpu_cell",
        "seed": args.seed,
        "rounds": args.max_rounds,
        "data": {**dataset, "partition": "shards", "shards_per_client": 2, "num_clients": clients},
        "model": {"name": "cnn"},
        "train": {
            "local_epochs": 1 if args.smoke else 5,
            "batch_size": 10,
            "lr": args.lr,
            "device": str(device),
            "precision": args.precision,
        },
        "strategy": {"name": "fedavg", "fraction": 0.1},
        "simulation": {"engine": "vectorized"},
        "eval": {"every": 1, "target_metric": "accuracy", "target_value": TARGET_ACCURACY},
        "output": {
            "dir": out_dir,
            "progress": False,
            "checkpoint": False,
            "tensorboard": False,
            "figures": False,
        },
    }
    exp = fedloom.Experiment.from_config(cfg, progress=False, overwrite=True)
    budget = Budget(args.cell_budget_s)
    exp.federation.callbacks.append(budget)
    t0 = time.perf_counter()
    result = exp.run()
    total = time.perf_counter() - t0
    accs = [r.get("accuracy") for r in result.history]
    reached = next(
        (r["round"] for r in result.history if (r.get("accuracy") or 0) >= TARGET_ACCURACY), None
    )
    engine = exp.federation.backend
    out = {
        "setting": "CNN, MNIST shards non-IID (2 per client), C=0.1, E=5, B=10",
        "clients": clients,
        "lr": args.lr,
        "engine_path": engine.path if isinstance(engine, VectorizedClients) else None,
        "rounds_run": result.rounds,
        "stop_reason": result.stop_reason,
        "rounds_to_99": reached,
        "paper_rounds_to_99": PAPER_NONIID_ROUNDS,
        "rounds_over_paper": reached / PAPER_NONIID_ROUNDS if reached else None,
        "seconds_per_round": median(budget.wall) if budget.wall else None,
        "total_seconds": total,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max((a for a in accs if a is not None), default=None),
        "accuracy": accs,
    }
    print(
        f"paper cell: {result.rounds} rounds ({result.stop_reason}), 99% at {reached} "
        f"(paper {PAPER_NONIID_ROUNDS}), {out['seconds_per_round'] or 0:.3f} s/round, "
        f"best {out['best_accuracy']}",
        flush=True,
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="auto, cpu, cuda, cuda:N (cuda)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per contender")
    parser.add_argument("--max-rounds", type=int, default=350, help="paper cell: at most")
    parser.add_argument("--cell-budget-s", type=float, default=210.0, help="paper cell: seconds")
    parser.add_argument("--lr", type=float, default=0.05, help="paper cell: client SGD lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--mnist-root", default=None, help="default: $FEDLOOM_MNIST or shared")
    parser.add_argument("--skip-cell", action="store_true", help="the W1 workloads only")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (results/gpu.json)")
    parser.add_argument("--smoke", action="store_true", help="every path on the CPU, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.rounds, args.warmup, args.max_rounds = "cpu", 2, 1, 2
    if min(args.rounds, args.warmup, args.max_rounds, args.threads) < 1:
        parser.error("--rounds, --warmup, --max-rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    data = fedloom.load_mnist5k() if args.smoke else fedloom.load_mnist(mnist_root(args.mnist_root))
    print(
        f"torch {torch.__version__} on {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"precision {args.precision}{', smoke' if args.smoke else ''}",
        flush=True,
    )
    results = [bench_workload(w, data, device, args) for w in workloads(args.smoke)]
    cell = None
    if not args.skip_cell:
        with tempfile.TemporaryDirectory(prefix="fedloom-gpu-") as tmp:
            cell = paper_cell(device, args, tmp)
    payload = {
        "device": str(device),
        "precision": args.precision,
        "smoke": args.smoke,
        "workloads": results,
        "paper_cell": cell,
        "total_seconds": time.perf_counter() - t_start,
    }
    if args.out is not None:
        import json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        body = {"benchmark": "gpu", "machine": machine_info(), **payload}
        args.out.write_text(json.dumps(body, indent=2, default=str) + "\n")
        path = args.out
    else:
        path = write_results("gpu_smoke" if args.smoke else "gpu", payload)
    print(f"results: {path if args.out else path.relative_to(RESULTS_DIR.parent.parent)}")
    headlines: dict[str, Any] = {}
    for r in results:
        headlines[f"{r['name']}_sequential_over_plain"] = f"{r['sequential_over_plain']:.3f}"
        headlines[f"{r['name']}_plain_over_vectorized"] = f"{r['plain_over_vectorized']:.2f}"
    if cell is not None:
        headlines["cell_rounds_to_99"] = cell["rounds_to_99"]
        spr = cell["seconds_per_round"]
        headlines["cell_seconds_per_round"] = f"{spr:.3f}" if spr is not None else None
    headlines["total_seconds"] = f"{payload['total_seconds']:.1f}"
    print_headlines(headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
