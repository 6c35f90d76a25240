"""The strategy library side by side: accuracy, rounds to a target, stragglers, attacks.

Four settings, each run through fedloom's real path (``Experiment.from_config`` with a config
dict, one seed, the in-process engine, 1 torch thread):

1. ``mnist_dir0.1`` and ``mnist_dir0.5``: MNIST (60k train, 10k test) split over 100 clients by
   Dirichlet(alpha) on labels, 10 clients per round, the FedAvg paper's 2NN (784-200-200-10),
   E=1, B=10, client SGD lr 0.05, ``--rounds`` rounds. Every strategy of the library with the
   hyper-parameters listed in ``ALGORITHMS`` (paper defaults where they exist; nothing tuned).
   Reported: final and best global test accuracy, the first round at ``--target`` accuracy,
   and, for personalised and clustered strategies, the accuracy of each client's own model
   (see :mod:`fedloom.personal`: per-class test accuracy weighted by the client's label mix).
2. ``synthetic_stragglers``: FedProx's Synthetic(1, 1) (30 clients, logistic regression,
   10 per round, E=20, B=10, lr 0.01, as in Li et al. 2020) with 90% stragglers (a random
   number of epochs in [1, E]). FedAvg drops the stragglers, FedProx keeps their partial work;
   mu = 1 is the paper's setting. Reported: final training loss and test accuracy.
3. ``robust``: MNIST split IID over 100 clients (the setting the robust rules' guarantees
   assume), otherwise as in 1, with 20% of the clients sign-flip attackers
   (they send the global model minus 10x their honest update), aggregated by the mean,
   coordinate median, trimmed mean (beta 0.2), Krum (f = 2) and Multi-Krum, against the
   attack-free mean.

Writes ``benchmarks/results/algorithms.json`` and ``algorithms.md`` (the table) and prints
headline lines. ``--quick`` runs 3 rounds of each (a smoke check, not a result).

    .venv/bin/python benchmarks/algorithms.py            # about 15-25 min on 1 thread
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from common import BENCH_DIR, mnist_root, print_headlines, write_results

import fedloom

# name -> (strategy name, options); personalised ones also report their clients' accuracy
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "FedAvg": ("fedavg", {}),
    "FedAvgM": ("fedavgm", {"server_lr": 1.0, "momentum": 0.9}),
    "FedAdam": ("fedadam", {"server_lr": 0.01}),
    "FedYogi": ("fedyogi", {"server_lr": 0.01}),
    "FedAdagrad": ("fedadagrad", {"server_lr": 0.1}),
    "FedProx": ("fedprox", {"mu": 0.01}),
    "SCAFFOLD": ("scaffold", {}),
    "FedNova": ("fednova", {}),
    "FedDyn": ("feddyn", {"alpha": 0.01}),
    "q-FFL": ("qffl", {"q": 1.0, "lr": 0.05}),
    "Ditto": ("ditto", {"lam": 0.1}),
    "FedPer": ("fedper", {}),
    "IFCA": ("ifca", {"clusters": 2}),
    "k-means": ("clustered", {"clusters": 2}),
}
PERSONAL = {"Ditto", "FedPer", "IFCA", "k-means"}
ROBUST: dict[str, Any] = {
    "mean": None,
    "median": "median",
    "trimmed mean": {"name": "trimmed_mean", "beta": 0.2},
    "Krum": {"name": "krum", "num_byzantine": 2},
    "Multi-Krum": {"name": "multi_krum", "num_byzantine": 2},
}


def mnist_config(args: argparse.Namespace, name: str, alpha: float) -> dict[str, Any]:
    return {
        "name": name,
        "seed": args.seed,
        "rounds": args.rounds,
        "data": {
            "dataset": "mnist",
            "root": str(mnist_root(args.mnist_root)),
            "partition": "dirichlet",
            "alpha": alpha,
            "num_clients": 100,
        },
        "model": {"name": "mlp"},
        "train": {"local_epochs": 1, "batch_size": 10, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": 10},
        "eval": {"every": 1},
        "output": {
            "dir": str(BENCH_DIR / "results" / "runs" / "algorithms"),
            "progress": False,
            "tensorboard": False,
            "figures": False,
            "checkpoint": False,
        },
    }


def run(cfg: dict[str, Any], target: float | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    exp = fedloom.Experiment.from_config(cfg, progress=False, overwrite=True)
    result = exp.run()
    accs = [r.get("accuracy") for r in result.history]
    out: dict[str, Any] = {
        "final_accuracy": result.final_metrics.get("accuracy"),
        "best_accuracy": max((a for a in accs if a is not None), default=None),
        "final_train_loss": result.history[-1]["train_loss"],
        "rounds_to_target": next(
            (r["round"] for r in result.history if target and (r.get("accuracy") or 0) >= target),
            None,
        ),
        "accuracy_per_round": accs,
        "seconds": time.perf_counter() - t0,
    }
    if getattr(exp.federation.strategy, "client_model", None) is not None:
        personal = fedloom.personalised_accuracy(exp.task, exp.federation)
        out["personal"] = {k: v for k, v in personal.items() if k != "per_client"}
    return out


def fmt(x: Any, pct: bool = True) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{100 * x:.1f}" if pct else f"{x:.3f}"
    return str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40, help="rounds of the MNIST settings")
    p.add_argument("--synthetic-rounds", type=int, default=100)
    p.add_argument("--target", type=float, default=0.85, help="accuracy for rounds-to-target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-root", default=None)
    p.add_argument("--only", default=None, help="comma-separated algorithm names")
    p.add_argument("--skip", default="", help="comma-separated settings to skip")
    p.add_argument("--quick", action="store_true", help="3 rounds each: a smoke check")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = args.synthetic_rounds = 3
    torch.set_num_threads(1)
    skip = set(filter(None, args.skip.split(",")))
    only = set(args.only.split(",")) if args.only else None
    t_start = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args), "settings": {}}

    for alpha in (0.1, 0.5):
        setting = f"mnist_dir{alpha}"
        if setting in skip:
            continue
        rows = results["settings"].setdefault(setting, {})
        for label, (name, options) in ALGORITHMS.items():
            if only and label not in only:
                continue
            cfg = mnist_config(args, f"{setting}_{name}", alpha)
            cfg["strategy"] |= {"name": name, "options": dict(options)}
            rows[label] = run(cfg, args.target)
            r = rows[label]
            mine = r.get("personal", {}).get("personal_accuracy")
            extra = f" personal {fmt(mine)}" if mine is not None else ""
            print(
                f"{setting:14s} {label:10s} acc {fmt(r['final_accuracy'])} best "
                f"{fmt(r['best_accuracy'])} to-{args.target}: {fmt(r['rounds_to_target'])}"
                f"{extra} ({r['seconds']:.0f} s)",
                flush=True,
            )

    if "synthetic_stragglers" not in skip:
        rows = results["settings"].setdefault("synthetic_stragglers", {})
        for label, name, options in (
            ("FedAvg (drops stragglers)", "fedavg", {}),
            ("FedProx mu=0", "fedprox", {"mu": 0.0}),
            ("FedProx mu=1", "fedprox", {"mu": 1.0}),
        ):
            cfg = mnist_config(args, f"synthetic_{name}_{options.get('mu', '')}", 0.5)
            cfg |= {"rounds": args.synthetic_rounds}
            cfg["data"] = {
                "dataset": "synthetic",
                "partition": "natural",
                "num_clients": 30,
                "options": {"alpha": 1.0, "beta": 1.0},
            }
            cfg["model"] = {"name": "logreg"}
            cfg["train"] = {"local_epochs": 20, "batch_size": 10, "lr": 0.01, "stragglers": 0.9}
            cfg["strategy"] |= {"name": name, "options": options}
            rows[label] = r = run(cfg, None)
            print(
                f"synthetic      {label:26s} train loss {fmt(r['final_train_loss'], False)} "
                f"acc {fmt(r['final_accuracy'])} ({r['seconds']:.0f} s)",
                flush=True,
            )

    if "robust" not in skip:
        rows = results["settings"].setdefault("robust", {})
        cases = [("mean, no attack", None, False)] + [(k, v, True) for k, v in ROBUST.items()]
        for label, agg, attacked in cases:
            cfg = mnist_config(args, f"robust_{label.replace(' ', '_')}", 0.5)
            cfg["data"]["partition"] = "iid"  # the setting the robust rules' guarantees assume
            if agg is not None:
                cfg["strategy"]["options"] = {"aggregator": agg}
            if attacked:
                cfg["attack"] = {"kind": "sign_flip", "fraction": 0.2, "scale": 10.0}
            rows[label] = r = run(cfg, args.target)
            print(f"robust         {label:16s} acc {fmt(r['final_accuracy'])}", flush=True)

    results["total_seconds"] = time.perf_counter() - t_start
    table = markdown(results, args)
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    (BENCH_DIR / "results" / "algorithms.md").write_text(table)
    path = write_results("algorithms", results)
    print(table)
    print(f"results: {path}", flush=True)
    heads: dict[str, Any] = {}
    for setting, rows in results["settings"].items():
        for label, r in rows.items():
            key = f"{setting}_{label}".lower().replace(" ", "_").replace("-", "_")
            heads[f"{key}_accuracy"] = fmt(r["final_accuracy"])
    print_headlines(heads)
    return 0


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    s = results["settings"]
    lines = [
        "# fedloom algorithms benchmark",
        "",
        f"MNIST, 100 clients, 10 per round, 2NN, E=1, B=10, lr 0.05, {args.rounds} rounds, "
        f"seed {args.seed}. Accuracy in % on the 10k test set; 'to {args.target}' is the first "
        "round at that accuracy; 'personal' is the mean accuracy of the clients' own models.",
        "",
        "| algorithm | Dir(0.1) final | best | to target | personal "
        "| Dir(0.5) final | best | to target | personal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    a, b = s.get("mnist_dir0.1", {}), s.get("mnist_dir0.5", {})
    for label in ALGORITHMS:
        cells = [label]
        for rows in (a, b):
            r = rows.get(label)
            if r is None:
                cells += ["-"] * 4
                continue
            cells += [
                fmt(r["final_accuracy"]),
                fmt(r["best_accuracy"]),
                fmt(r["rounds_to_target"]),
                fmt(r["personal"]["personal_accuracy"]) if "personal" in r else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if "synthetic_stragglers" in s:
        lines += [
            "",
            f"Synthetic(1,1), 30 clients, logreg, E=20, 90% stragglers, "
            f"{args.synthetic_rounds} rounds:",
            "",
            "| strategy | final train loss | test accuracy |",
            "|---|---|---|",
        ]
        for label, r in s["synthetic_stragglers"].items():
            lines.append(
                f"| {label} | {fmt(r['final_train_loss'], False)} | {fmt(r['final_accuracy'])} |"
            )
    if "robust" in s:
        lines += [
            "",
            "MNIST IID, 20% sign-flip clients (scale 10):",
            "",
            "| aggregator | final accuracy | best |",
            "|---|---|---|",
        ]
        for label, r in s["robust"].items():
            lines.append(f"| {label} | {fmt(r['final_accuracy'])} | {fmt(r['best_accuracy'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
