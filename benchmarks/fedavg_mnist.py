"""Reproduce FedAvg on MNIST: McMahan et al. 2017, Table 2, CNN row, IID, E=5, B=10.

What is measured: communication rounds for the FedAvg paper's CNN (conv5x5-32, pool,
conv5x5-64, pool, fc512, fc10) to reach 99% accuracy on the 10k MNIST test set, training on
the full 60k training set split IID over 100 clients of 600 samples, with C=0.1 (10 clients
per round), E=5 local epochs and local batch B=10 (300 SGD steps per client, 3000 per
round). The paper reports 20 rounds for this setting (vs 626 for FedSGD). Also recorded: the
accuracy after every round, the best and final accuracy, and the seconds each round took.

Why it is a fair reproduction: it runs fedloom's real code path (``Experiment.from_config``
with a config dict, the registered "mnist" loader, the "iid" partitioner, the "cnn" model,
the FedAvg strategy, the run directory with metrics, checkpoint, TensorBoard and report) with
the paper's setting; only the learning rate differs in kind: the paper tuned it per setting
and does not list the value, so it is an option (``--lr``, default 0.05). The test set is
evaluated after every round, as the paper's curves are, and the run stops at the first round
that reaches the target (``eval.target_metric="accuracy"``, ``eval.target_value=0.99``) or at
``--max-rounds``. Differences that remain: plain SGD without the paper's lr decay, one seed.

    .venv/bin/python benchmarks/fedavg_mnist.py              # the full run (15-60 min on 2 CPUs)
    .venv/bin/python benchmarks/fedavg_mnist.py --quick      # smoke check: 2 rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from common import BENCH_DIR, median, mnist_root, print_headlines, write_results

import fedloom

PAPER_ROUNDS_TO_99 = 20  # Table 2, CNN, E=5, B=10, IID
TARGET_ACCURACY = 0.99


class RoundPrinter(fedloom.Callback):
    """Prints one line per round as it ends (round, accuracy, seconds) and keeps wall times.

    ``seconds`` is the loop's own time for the round (training, aggregation, evaluation);
    ``wall`` also counts the run directory's per-round work (metrics line, TensorBoard,
    checkpoint), i.e. the time between the ends of two rounds.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self._last = time.perf_counter()

    def on_start(self, fed: fedloom.Federation) -> None:
        self._last = time.perf_counter()

    def on_round_end(self, fed: fedloom.Federation, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        wall, self._last = now - self._last, now
        self.wall.append(wall)
        acc = record.get("accuracy", float("nan"))
        print(
            f"round {record['round']:3d}  accuracy {acc:.4f}  "
            f"test_loss {record.get('test_loss', float('nan')):.4f}  "
            f"train_loss {record['train_loss']:.4f}  seconds {record['seconds']:.1f}  "
            f"(wall {wall:.1f})",
            flush=True,
        )


def build_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The run's fedloom config (a dict, validated by fedloom like a TOML file would be)."""
    return {
        "name": name,
        "seed": args.seed,
        "rounds": args.max_rounds,
        "data": {
            "dataset": "mnist",
            "root": str(mnist_root(args.mnist_root)),
            "partition": "iid",
            "num_clients": 100,
        },
        "model": {"name": "cnn"},
        "train": {"local_epochs": 5, "batch_size": 10, "lr": args.lr, "optimizer": "sgd"},
        "strategy": {"name": "fedavg", "clients_per_round": 10},
        "eval": {"every": 1, "target_metric": "accuracy", "target_value": TARGET_ACCURACY},
        "output": {"dir": str(BENCH_DIR / "results" / "runs"), "progress": False},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rounds", type=int, default=60, help="stop here if 99%% not met")
    parser.add_argument("--lr", type=float, default=0.05, help="client SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine 2 threads can be "
        "10x slower when another job is busy; use 2 on an idle machine)",
    )
    parser.add_argument("--mnist-root", default=None, help="default: $FEDLOOM_MNIST or shared")
    parser.add_argument("--quick", action="store_true", help="smoke check: --max-rounds 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_rounds = 2
    if args.max_rounds < 1:
        parser.error("--max-rounds must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)

    bench_name = "fedavg_mnist_quick" if args.quick else "fedavg_mnist"
    cfg = build_config(args, "fedavg_mnist_cnn_quick" if args.quick else "fedavg_mnist_cnn")
    t0 = time.perf_counter()
    exp = fedloom.Experiment.from_config(cfg, progress=False, overwrite=True)
    setup_s = time.perf_counter() - t0
    printer = RoundPrinter()
    exp.federation.callbacks.append(printer)
    sizes = sorted({len(p) for p in exp.parts})
    print(
        f"FedAvg CNN on MNIST: {len(exp.parts)} IID clients of {sizes} samples, "
        f"{len(exp.dataset.test_y)} test; C=0.1 (10/round), E=5, B=10, lr={args.lr}; "
        f"max {args.max_rounds} rounds; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; run dir {exp.run_dir}",
        flush=True,
    )

    t0 = time.perf_counter()
    result = exp.run()
    total_s = time.perf_counter() - t0

    history = [
        {
            "round": r["round"],
            "accuracy": r.get("accuracy"),
            "test_loss": r.get("test_loss"),
            "train_loss": r.get("train_loss"),
            "seconds": r["seconds"],
            "wall_seconds": wall,
        }
        for r, wall in zip(result.history, printer.wall)
    ]
    evals = [h for h in history if h["accuracy"] is not None]
    reached = next((h["round"] for h in evals if h["accuracy"] >= TARGET_ACCURACY), None)
    best = max(evals, key=lambda h: h["accuracy"]) if evals else None
    round_seconds = [h["seconds"] for h in history]
    results: dict[str, Any] = {
        "setting": {
            "paper": "McMahan et al. 2017, Table 2, CNN, IID, E=5, B=10, C=0.1",
            "clients": len(exp.parts),
            "samples_per_client": sizes,
            "clients_per_round": 10,
            "local_epochs": 5,
            "batch_size": 10,
            "lr": args.lr,
            "seed": args.seed,
            "max_rounds": args.max_rounds,
            "quick": args.quick,
        },
        "rounds_to_99": reached,
        "paper_rounds_to_99": PAPER_ROUNDS_TO_99,
        "rounds_run": result.rounds,
        "stop_reason": result.stop_reason,
        "final_accuracy": result.final_metrics.get("accuracy"),
        "best_accuracy": best["accuracy"] if best else None,
        "best_round": best["round"] if best else None,
        "seconds_per_round": {
            "median": median(round_seconds),
            "min": min(round_seconds),
            "max": max(round_seconds),
        },
        "setup_seconds": setup_s,
        "total_seconds": total_s,
        "run_dir": str(exp.run_dir),
        "config": cfg,
        "history": history,
    }
    path = write_results(bench_name, results)
    print(
        f"stop: {result.stop_reason} after {result.rounds} rounds in {total_s:.0f} s; "
        f"99% reached at round {reached} (paper: {PAPER_ROUNDS_TO_99}); results: {path}",
        flush=True,
    )
    print_headlines(
        {
            "fedavg_cnn_rounds_to_99": reached,
            "fedavg_cnn_best_accuracy": f"{best['accuracy']:.4f}" if best else None,
            "fedavg_cnn_final_accuracy": (
                f"{result.final_metrics['accuracy']:.4f}"
                if "accuracy" in result.final_metrics
                else None
            ),
            "fedavg_cnn_seconds_per_round": f"{median(round_seconds):.1f}",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
