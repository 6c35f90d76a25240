"""Differential privacy: accountant cost, calibration, and DP-FedAvg accuracy against epsilon.

1. ``accountant``: the time one round of accounting costs a run (record the round, the
   epsilon for the record, the look-ahead for ``target_epsilon``), over 1,000 rounds for the
   RDP accountant (the default) and 20 for the PLD one (it recomposes every round: tighter
   and far slower); the issue's target is < 10 ms a round.
2. ``calibration``: the noise multiplier for each target epsilon (delta 1e-5, ``--rounds``
   rounds, q = clients per round / clients) and the time the search takes.
3. ``mnist``: DP-FedAvg (client-level central DP, fixed clipping) on MNIST, 1,000 clients
   split by Dirichlet(0.5) on labels, ``--clients-per-round`` per round, the FedAvg paper's
   2NN, E=1, B=10, lr 0.05, for epsilon in {1, 2, 4, 8} (z calibrated) and inf (no noise,
   no clipping: uniform FedAvg). Reported: final test accuracy and the epsilon spent.
4. ``mnist_distributed``: the same runs with distributed DP (``DistributedDP``): each client
   clips, adds its Skellam share and masks; the real SecAgg+ protocol sums (in-process).
   Same z per epsilon (the accountant charges the noise in the sum, z sensitivities of
   ``C + sqrt(d) * step``); epsilon inf is SecAgg+ without noise. ``privacy.png``, next to
   the JSON, plots both accuracy curves against epsilon.
5. ``secagg_cost``: SecAgg+ against plain FedAvg, 100 and 500 clients of a 1M-parameter
   model with the same local training, in simulation and over a loopback aggregator with the
   clients in a few client processes (``privacy_secagg_net.measure``; the target is at most
   1.5x the plain round at 100 clients), and bytes per client.

Writes ``benchmarks/results/privacy.json`` and prints headline lines. ``--quick`` runs the
first two and 3 rounds of the others (a smoke check, not a result); ``--skip mnist`` (or
``mnist_distributed``, ``secagg_cost``) skips those runs.

    .venv/bin/python benchmarks/privacy.py --skip mnist     # seconds
    .venv/bin/python benchmarks/privacy.py                  # MNIST: minutes on 1 thread
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import privacy_secagg_net
import torch
from common import BENCH_DIR, mnist_root, print_headlines, write_results

import fedloom
from fedloom.privacy import (
    Accountant,
    CentralDP,
    DistributedDP,
    SecureAggregation,
    Staged,
    calibrate_noise_multiplier,
)
from fedloom.stages import Stage

DELTA = 1e-5
EPSILONS = [1.0, 2.0, 4.0, 8.0, math.inf]


def accountant_cost(method: str, rounds: int = 1000, q: float = 0.01, z: float = 1.0) -> float:
    """Milliseconds a round of accounting costs a run, averaged over ``rounds`` rounds."""
    acc = Accountant(DELTA, method)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for _ in range(rounds):
        acc.step(q, z)
        acc.epsilon()
        acc.epsilon((q, z, 1))
    return 1e3 * (time.perf_counter() - t0) / rounds


def calibration(rounds: int, q: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for eps in EPSILONS[:-1]:
        t0 = time.perf_counter()
        z = calibrate_noise_multiplier(eps, DELTA, rounds, q)
        out[str(eps)] = {"noise_multiplier": z, "seconds": time.perf_counter() - t0}
    return out


def privacy_stage(args: argparse.Namespace, z: float | None, distributed: bool) -> Stage | None:
    """Central DP (None at epsilon inf), or distributed DP (SecAgg+ alone at inf)."""
    q = args.clients_per_round / args.clients
    if not distributed:
        return None if z is None else CentralDP(z, args.clip_norm, DELTA, sampling_rate=q)
    if z is None:
        return SecureAggregation(clipping_range=args.clip_norm)
    return DistributedDP(z, args.clip_norm, DELTA, sampling_rate=q)


def mnist_run(
    args: argparse.Namespace, epsilon: float, z: float | None, distributed: bool = False
) -> dict[str, Any]:
    cfg = {
        "name": "privacy",
        "seed": args.seed,
        "rounds": args.rounds,
        "data": {
            "dataset": "mnist",
            "root": str(mnist_root(args.mnist_root)),
            "partition": "dirichlet",
            "alpha": 0.5,
            "num_clients": args.clients,
        },
        "model": {"name": "mlp"},
        "train": {"local_epochs": 1, "batch_size": 10, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": args.clients_per_round},
        "output": {
            "dir": str(BENCH_DIR / "results" / "runs" / "privacy"),
            "progress": False,
            "tensorboard": False,
            "figures": False,
            "checkpoint": False,
        },
    }
    exp = fedloom.Experiment.from_config(cfg, progress=False, overwrite=True)
    inner = fedloom.FedAvg(clients_per_round=args.clients_per_round, weighted=False)
    stage = privacy_stage(args, z, distributed)
    strategy = inner if stage is None else Staged(inner, [stage])
    t0 = time.perf_counter()
    fed = fedloom.Federation(exp.task, strategy, rounds=args.rounds, seed=args.seed, eval_every=5)
    result = fed.run()
    last = result.history[-1]
    row = {
        "target_epsilon": None if math.isinf(epsilon) else epsilon,
        "noise_multiplier": z,
        "epsilon_spent": last.get("epsilon"),
        "final_accuracy": result.final_metrics.get("accuracy"),
        "seconds": time.perf_counter() - t0,
    }
    if distributed:
        row["secagg_seconds_per_round"] = sum(
            r.get("secagg_seconds", 0.0) for r in result.history
        ) / len(result.history)
        row["noise_std"] = last.get("noise_std")
        row["skellam_rdp_excess"] = last.get("skellam_rdp_excess")
    print(f"{'distributed' if distributed else 'central'} eps {epsilon}: {row}", flush=True)
    return row


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against epsilon, central and distributed DP (inf drawn at the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    finite = [e for e in EPSILONS if not math.isinf(e)]
    where = [*finite, 2 * finite[-1]]
    for key, label in (("mnist", "central DP"), ("mnist_distributed", "distributed DP + SecAgg+")):
        if key in results:
            acc = [results[key][str(e)]["final_accuracy"] for e in EPSILONS]
            ax.plot(where, acc, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(where, [*(f"{e:g}" for e in finite), "inf"])
    ax.set_xlabel("epsilon (delta 1e-5)")
    ax.set_ylabel("test accuracy")
    settings = results["settings"]
    ax.set_title(
        f"MNIST 2NN, {settings['clients']} clients (Dirichlet 0.5), "
        f"{settings['clients_per_round']} a round, {settings['rounds']} rounds",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--clients-per-round", type=int, default=100)
    p.add_argument("--clip-norm", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-root", default=None)
    p.add_argument("--skip", default="", help="comma-separated parts to skip (mnist)")
    p.add_argument("--quick", action="store_true", help="3 MNIST rounds: a smoke check")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 3
    torch.set_num_threads(1)
    q = args.clients_per_round / args.clients
    results: dict[str, Any] = {
        "delta": DELTA,
        "accountant_ms_per_round": {
            "rdp": accountant_cost("rdp"),
            "pld": accountant_cost("pld", 20),
        },
        "calibration": calibration(args.rounds, q),
        "settings": vars(args),
    }
    z_of = {
        str(eps): None if math.isinf(eps) else results["calibration"][str(eps)]["noise_multiplier"]
        for eps in EPSILONS
    }
    for key in ("mnist", "mnist_distributed"):
        if key not in args.skip.split(","):
            results[key] = {
                str(eps): mnist_run(args, eps, z_of[str(eps)], key == "mnist_distributed")
                for eps in EPSILONS
            }
    cost_heads: dict[str, Any] = {}
    if "secagg_cost" not in args.skip.split(","):
        cost = privacy_secagg_net.measure(["--quick"] if args.quick else [])
        results["secagg_cost"], cost_heads = cost["results"], cost["headlines"]
    path = write_results("privacy", results)
    if "mnist" in results or "mnist_distributed" in results:
        plot(results, path.with_suffix(".png"))
    heads: dict[str, Any] = {
        f"accountant_{m}_ms_per_round": v for m, v in results["accountant_ms_per_round"].items()
    }
    for eps, row in results["calibration"].items():
        heads[f"noise_multiplier_eps{eps}"] = row["noise_multiplier"]
    for eps, row in results.get("mnist", {}).items():
        heads[f"mnist_accuracy_eps{eps}"] = row["final_accuracy"]
    for eps, row in results.get("mnist_distributed", {}).items():
        heads[f"mnist_distributed_accuracy_eps{eps}"] = row["final_accuracy"]
        heads[f"mnist_distributed_epsilon_spent_eps{eps}"] = row["epsilon_spent"]
    heads.update(cost_heads)
    heads["results"] = str(path)
    print_headlines(heads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
