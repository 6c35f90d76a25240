"""Bytes to accuracy on MNIST: each uplink codec chain against plain float32 FedAvg.

What is measured, per chain, in one process and with the same seed (so the clients, their
data and the sampling are the same): the test accuracy after every round, the uplink and
downlink bytes the round loop records (``bytes_up`` / ``bytes_down``: the encoded sizes the
chains produced, or the wire format's exact sizes without compression), and the time spent
encoding and decoding the clients' updates against the clients' local training time
(``client_seconds``, less that coding time, which it includes). Reported against the plain
run: the uplink byte ratio (plain bytes / chain bytes) and the final accuracy difference in
points; a figure plots accuracy against cumulative uplink bytes.

The defaults are issue 13's setting: the FedAvg paper's CNN, Dirichlet(0.5) over 100
clients, 10 per round, 50 rounds, E=1, B=10. ``--quick`` is a smoke run of the same code
(the MLP, 10 rounds). The full run takes hours on 2 shared CPUs.

    .venv/bin/python benchmarks/compression.py --quick
    .venv/bin/python benchmarks/compression.py            # the issue's setting
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from common import BENCH_DIR, mnist_root, print_headlines, write_results

import fedloom
from fedloom.compression.link import Compression

CHAINS: dict[str, list[str]] = {
    "plain": [],
    "fp16": ["fp16"],
    "q8": ["q8"],
    "topk1_zstd": ["topk:0.01", "zstd"],
    "topk1_q8_zstd": ["topk:0.01", "q8", "zstd"],
}


class CodecTimer:
    """Wraps a backend's :class:`Compression` to time its encode+decode calls."""

    def __init__(self, compression: Compression) -> None:
        self.seconds = 0.0
        real = compression.upload

        def upload(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        compression.upload = upload  # type: ignore[method-assign]


def config(args: argparse.Namespace, name: str, up: list[str]) -> dict[str, Any]:
    return {
        "name": f"compression_{name}",
        "seed": args.seed,
        "rounds": args.rounds,
        "data": {
            "dataset": "mnist",
            "root": str(mnist_root(args.mnist_root)),
            "partition": "dirichlet",
            "alpha": 0.5,
            "num_clients": 100,
        },
        "model": {"name": args.model},
        "train": {"local_epochs": 1, "batch_size": 10, "lr": args.lr, "optimizer": "sgd"},
        "strategy": {"name": "fedavg", "clients_per_round": 10},
        "eval": {"every": args.eval_every},
        "compression": {"up": up},
        "output": {
            "dir": str(BENCH_DIR / "results" / "runs"),
            "progress": False,
            "checkpoint": False,
        },
    }


def run_chain(args: argparse.Namespace, name: str, up: list[str]) -> dict[str, Any]:
    exp = fedloom.Experiment.from_config(config(args, name, up), progress=False, overwrite=True)
    backend = exp.federation.backend
    chains = getattr(backend, "compression", None)
    timer = CodecTimer(chains) if chains is not None else None
    t0 = time.perf_counter()
    result = exp.run()
    seconds = time.perf_counter() - t0
    history = [
        {
            "round": r["round"],
            "accuracy": r.get("accuracy"),
            "bytes_up": r["bytes_up"],
            "bytes_down": r["bytes_down"],
            "client_seconds": sum(r["client_seconds"].values()),
        }
        for r in result.history
    ]
    codec_s = timer.seconds if timer else 0.0
    train_s = sum(h["client_seconds"] for h in history) - codec_s
    out = {
        "chain": up,
        "final_accuracy": result.final_metrics.get("accuracy"),
        "bytes_up": sum(h["bytes_up"] for h in history),
        "bytes_down": sum(h["bytes_down"] for h in history),
        "codec_seconds": codec_s,
        "train_seconds": train_s,
        "codec_fraction": codec_s / train_s if train_s > 0 else None,
        "seconds": seconds,
        "history": history,
    }
    print(
        f"{name:15s} accuracy {out['final_accuracy']:.4f}  up {out['bytes_up']:>12,d} B  "
        f"codec/train {codec_s:.2f}/{train_s:.1f} s  ({seconds:.0f} s)",
        flush=True,
    )
    return out


def figure(runs: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        total, xs, ys = 0, [], []
        for h in run["history"]:
            total += h["bytes_up"]
            if h["accuracy"] is not None:  # rounds between tests have none
                xs.append(total / 1e6)
                ys.append(h["accuracy"])
        ax.plot(xs, ys, marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink MB")
    ax.set_ylabel("test accuracy")
    ax.set_title("MNIST, Dirichlet(0.5), 100 clients, 10/round")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--model", default="cnn", help="a registered model name")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--eval-every", type=int, default=5, help="test every N rounds (the last round always)"
    )
    parser.add_argument("--chains", nargs="*", default=list(CHAINS), choices=list(CHAINS))
    parser.add_argument("--mnist-root", default=None, help="default: $FEDLOOM_MNIST or shared")
    parser.add_argument("--quick", action="store_true", help="smoke run: mlp, 10 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.rounds, args.eval_every = "mlp", 10, 1
    torch.set_num_threads(args.threads)
    names = ["plain", *(n for n in args.chains if n != "plain")]
    runs = {name: run_chain(args, name, CHAINS[name]) for name in names}
    base = runs["plain"]
    for run in runs.values():
        run["uplink_ratio"] = base["bytes_up"] / run["bytes_up"]
        run["accuracy_delta_points"] = 100 * (run["final_accuracy"] - base["final_accuracy"])
    bench = "compression_quick" if args.quick else "compression"
    fig_path = str(BENCH_DIR / "results" / f"{bench}.png")
    figure(runs, fig_path)
    keys = ("rounds", "model", "lr", "seed", "quick", "eval_every")
    setting = {k: getattr(args, k) for k in keys}
    path = write_results(bench, {"setting": setting, "figure": fig_path, "runs": runs})
    print(f"results: {path}; figure: {fig_path}", flush=True)
    headlines: dict[str, Any] = {}
    for name, run in runs.items():
        if name == "plain":
            headlines["plain_final_accuracy"] = f"{run['final_accuracy']:.4f}"
            continue
        headlines[f"{name}_uplink_ratio"] = f"{run['uplink_ratio']:.2f}"
        headlines[f"{name}_accuracy_delta_points"] = f"{run['accuracy_delta_points']:+.2f}"
        headlines[f"{name}_codec_fraction_of_training"] = f"{run['codec_fraction']:.4f}"
    print_headlines(headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
