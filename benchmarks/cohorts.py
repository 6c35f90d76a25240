"""Cohort scaling: fedloom's vectorised engine vs. the sequential engine and a plain loop.

What is measured: wall-clock (and process CPU) seconds of one FedAvg training round, for
contenders doing the same work:

* ``fused``: ``Federation`` with ``VectorizedClients`` taking its hand-derived step for chains
  of Linear layers and activations (:mod:`fedloom.simulation.fused`; the engine's default for
  such models: the MLP and logistic regression, not the CNN);
* ``vmap``: ``Federation`` with ``VectorizedClients(fuse=False)``: all clients of a round
  trained together with ``torch.func.vmap(grad(...))`` (what the engine runs for the CNN);
* ``sequential``: ``Federation`` with the default ``InProcessClients``;
* ``plain``: the hand-written PyTorch loop of ``benchmarks/overhead.py`` (``PlainFedAvg``).

Each vectorised step is a separate named result (``speedup_vs_plain["fused"]``,
``speedup_vs_plain["vmap"]``, headlines ``fused_speedup_*`` / ``vmap_speedup_*``). In (b) the
figure per client is what it is: a round's median time divided by its 100 clients
(``ms_per_client_*``), for every contender; the framework's overhead per client is reported
only where it is one: the sequential engine's time minus the plain loop's, same work, per
client (``sequential_overhead_ms_per_client``).

Scenarios:

(a) MNIST, 100 clients x 40 samples (the first 4000 training samples, IID), 20 clients per
    round, E=1, B=10, lr 0.05, for the 784-200-200-10 MLP, logistic regression and the
    FedAvg CNN (which vmap can batch, so it is vectorised and reported as it comes out).
(b) MNIST, 1,000 clients x 4 samples, 100 per round, logistic regression: milliseconds per
    client, i.e. what each extra client of a round costs when the model is trivial.
(c) FedProx Synthetic(1,1), 10,000 clients x 6 samples, 1,000 per round, logistic
    regression (60 -> 10), B=10, lr 0.01: seconds per round and the process's peak RSS.
    ``load_synthetic(num_clients=10000)`` would make ~4.5M samples (its per-client sizes are
    lognormal(4, 2) + 50), so the data is generated for as many of its generators as give
    60,000 training samples and re-split: each generator's samples are cut into runs of 6,
    dealt out round-robin over generators, so a client's samples still share one
    Synthetic(1,1) generator (the benchmark's heterogeneity is kept). It runs first, so the
    peak RSS is not that of MNIST's 200 MB of tensors.

Fairness, as in ``overhead.py``: same architecture and initial weights (the same seed), the
same tensors in memory, the same work per round (clients, epochs, batch size, lr, a fresh SGD
per client, sample-weighted average); no evaluation, logging or callbacks in the timed part;
every contender warmed up; rounds alternate between contenders with the order rotated each
round, so machine noise hits all alike; medians reported. One intra-op thread (``--threads``):
this 2-core machine is shared, and more threads make small ops wait on each other.

The vectorised steps and the sequential engine run the same rounds (same sampling, same
shuffles), so the largest difference between each one's final model and the sequential one's
is printed as a check of equivalence.

    .venv/bin/python benchmarks/cohorts.py [--rounds 16] [--cnn-rounds 4] [--skip-cnn]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from common import median, mnist_root, peak_rss_mb, print_headlines, rss_mb, write_results
from overhead import PlainFedAvg, accuracy, iid_parts
from torch import nn

import fedloom
from fedloom.seeding import derive_seed
from fedloom.simulation.vectorized import VectorizedClients

MNIST_SHAPE, MNIST_CLASSES = (1, 28, 28), 10
SYNTHETIC_CLIENTS, SYNTHETIC_PER_CLIENT, SYNTHETIC_PER_ROUND = 10_000, 6, 1_000
TARGET_SPEEDUP_MLP = 2.0
TARGET_SYNTHETIC_SECONDS = 2.0
TARGET_SYNTHETIC_RSS_MB = 2048.0


def initial_model(name: str, input_shape: tuple[int, ...], classes: int, seed: int) -> nn.Module:
    """The model with the initial weights fedloom's Federation gives it for ``seed``."""
    torch.manual_seed(derive_seed(seed, "init"))
    return fedloom.build_model(name, input_shape, classes)


def contenders_for(
    model: str,
    dataset: fedloom.TensorDataset,
    parts: Sequence[np.ndarray],
    *,
    per_round: int,
    batch_size: int,
    local_epochs: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """fedloom's federations (the fused and the vmap step where the model has both, else the
    vmap step alone; the sequential engine) and the plain loop, same setup."""
    shape = tuple(dataset.input_shape)

    def task() -> fedloom.ClassificationTask:
        return fedloom.ClassificationTask(
            partial(fedloom.build_model, model, shape, dataset.num_classes),
            dataset,
            list(parts),
            lr=lr,
            batch_size=batch_size,
            local_epochs=local_epochs,
        )

    def federation(backend: Callable[[fedloom.Task], Any]) -> fedloom.Federation:
        t = task()
        fed = fedloom.Federation(
            t,
            fedloom.FedAvg(clients_per_round=per_round),
            backend=backend(t),
            rounds=10**6,
            seed=seed,
            eval_every=10**6,
        )
        fed.callbacks = []
        return fed

    fused = federation(lambda t: VectorizedClients(t, seed))
    vmap = federation(lambda t: VectorizedClients(t, seed, fuse=False))
    seq = federation(lambda t: fedloom.InProcessClients(t, seed))
    plain = PlainFedAvg(
        initial_model(model, shape, dataset.num_classes, seed),
        dataset.train_x,
        dataset.train_y,
        parts,
        clients_per_round=per_round,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    start = torch.cat([p.detach().reshape(-1) for p in plain.model.parameters()])
    if not all(torch.equal(f.params, start) for f in (fused, vmap, seq)):
        raise RuntimeError("the contenders do not start from the same weights")
    contenders: dict[str, Any] = {}
    if fused.backend.path == "fused":  # else the engine's default is the vmap step itself
        contenders["fused"] = fused
    contenders.update(vmap=vmap, sequential=seq, plain=plain)
    return contenders


def time_rounds(
    label: str, contenders: dict[str, Any], *, rounds: int, warmup: int
) -> dict[str, Any]:
    """Warm up, then ``rounds`` alternating rounds of each contender (order rotated per round)."""
    counters = dict.fromkeys(contenders, 0)

    def one_round(name: str) -> None:
        c = contenders[name]
        if isinstance(c, fedloom.Federation):
            counters[name] += 1
            c.run_round(counters[name])
        else:
            c.run_round()

    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            one_round(name)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        if (i // len(names)) % 2:
            order.reverse()
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            one_round(name)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        print(
            f"  {label} round {i + 1:2d}/{rounds}: "
            + ", ".join(f"{n} {wall[n][-1]:.4f} s" for n in names),
            flush=True,
        )
    med = {n: median(wall[n]) for n in names}
    cpu_med = {n: median(cpu[n]) for n in names}
    seq = contenders["sequential"]
    steps = [n for n in ("fused", "vmap") if n in contenders]
    return {
        "measured_rounds": rounds,
        "warmup_rounds": warmup,
        "seconds_per_round": {
            n: {"median": med[n], "min": min(wall[n]), "max": max(wall[n]), "all": wall[n]}
            for n in names
        },
        "cpu_seconds_per_round": {n: {"median": cpu_med[n], "all": cpu[n]} for n in names},
        # per vectorised step: plain's (sequential's) median round time over the step's
        "speedup_vs_plain": {n: med["plain"] / med[n] for n in steps},
        "speedup_vs_sequential": {n: med["sequential"] / med[n] for n in steps},
        "cpu_speedup_vs_plain": {n: cpu_med["plain"] / cpu_med[n] for n in steps},
        "sequential_vs_plain": med["sequential"] / med["plain"],
        # which step each ran (a fall-back to the sequential engine shows here, with why)
        "path": {n: contenders[n].backend.path for n in steps},
        "fallback_reason": {n: contenders[n].backend.fallback_reason for n in steps},
        "params": seq.spec.numel,
        # same rounds, same sampling and shuffles: the engines must agree
        "max_abs_diff_vs_sequential": {
            n: float((contenders[n].params - seq.params).abs().max()) for n in steps
        },
    }


def report(label: str, res: dict[str, Any]) -> None:
    s, c = res["seconds_per_round"], res["cpu_seconds_per_round"]
    names = list(s)
    steps = list(res["speedup_vs_plain"])

    def step(n: str) -> str:
        path = res["path"][n]
        fell = "" if path == n else f" FELL BACK to {path} ({res['fallback_reason'][n]})"
        return (
            f"{n} step {res['speedup_vs_plain'][n]:.2f}x plain, "
            f"{res['speedup_vs_sequential'][n]:.2f}x sequential, max |{n} - sequential| "
            f"{res['max_abs_diff_vs_sequential'][n]:.2e}{fell}"
        )

    print(
        f"{label}: s/round (wall medians of {res['measured_rounds']}) "
        + ", ".join(f"{n} {s[n]['median']:.4f}" for n in names)
        + "; CPU-time medians "
        + ", ".join(f"{n} {c[n]['median']:.4f}" for n in names)
        + "; "
        + "; ".join(step(n) for n in steps)
        + f"; sequential / plain {res['sequential_vs_plain']:.2f}",
        flush=True,
    )


def test_accuracy(contenders: dict[str, Any], ds: fedloom.TensorDataset) -> dict[str, float]:
    """Each contender's global model's test accuracy (a sanity check, not asserted)."""
    return {
        n: accuracy(c.global_model() if n == "plain" else c.model, ds.test_x, ds.test_y)
        for n, c in contenders.items()
    }


def synthetic_dataset(seed: int) -> tuple[fedloom.TensorDataset, list[np.ndarray], int]:
    """Synthetic(1,1) re-split into 10,000 clients of 6 samples (see the module docstring)."""
    needed = SYNTHETIC_CLIENTS * SYNTHETIC_PER_CLIENT
    generators = 200
    while True:
        ds = fedloom.load_synthetic(alpha=1, beta=1, num_clients=generators, seed=seed)
        assert ds.natural_partition is not None
        runs = [
            [p[i : i + SYNTHETIC_PER_CLIENT].numpy() for i in range(0, len(p) - 5, 6)]
            for p in ds.natural_partition
        ]
        if sum(len(r) for r in runs) >= SYNTHETIC_CLIENTS:
            break
        generators = int(generators * 1.5)
        if len(ds) > 10 * needed:
            raise RuntimeError("Synthetic(1,1) gave too few 6-sample runs")
    parts: list[np.ndarray] = []
    depth = 0
    while len(parts) < SYNTHETIC_CLIENTS:
        for r in runs:
            if depth < len(r) and len(parts) < SYNTHETIC_CLIENTS:
                parts.append(r[depth])
        depth += 1
    return ds, parts, generators


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16, help="measured rounds, MLP/logreg")
    parser.add_argument("--cnn-rounds", type=int, default=4, help="measured rounds, CNN")
    parser.add_argument("--synthetic-rounds", type=int, default=5)
    parser.add_argument("--synthetic-epochs", type=int, default=1, help="E for Synthetic")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per contender")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--mnist-root", default=None, help="default: $FEDLOOM_MNIST or shared")
    args = parser.parse_args(argv)
    if min(args.rounds, args.cnn_rounds, args.synthetic_rounds, args.warmup) < 1:
        parser.error("round counts must be >= 1")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    # (c) first, so that its peak RSS is not MNIST's
    rss_before = rss_mb()
    t0 = time.perf_counter()
    syn, syn_parts, generators = synthetic_dataset(args.seed)
    print(
        f"(c) Synthetic(1,1): {generators} generators, {len(syn)} train samples -> "
        f"{len(syn_parts)} clients x {SYNTHETIC_PER_CLIENT} ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    syn_setup = {
        "clients": len(syn_parts),
        "samples_per_client": SYNTHETIC_PER_CLIENT,
        "clients_per_round": SYNTHETIC_PER_ROUND,
        "generators": generators,
        "model": "logreg",
        "local_epochs": args.synthetic_epochs,
        "batch_size": 10,
        "lr": 0.01,
    }
    contenders = contenders_for(
        "logreg",
        syn,
        syn_parts,
        per_round=SYNTHETIC_PER_ROUND,
        batch_size=10,
        local_epochs=args.synthetic_epochs,
        lr=0.01,
        seed=args.seed,
    )
    synthetic = time_rounds(
        "(c) synthetic logreg", contenders, rounds=args.synthetic_rounds, warmup=args.warmup
    )
    synthetic["setup"] = syn_setup
    synthetic["rss_mb_before"] = rss_before
    synthetic["peak_rss_mb"] = peak_rss_mb()
    synthetic["test_accuracy_after"] = test_accuracy(contenders, syn)
    report("(c) synthetic 10k logreg", synthetic)
    print(
        f"(c) peak RSS {synthetic['peak_rss_mb']:.0f} MB (RSS before the scenario "
        f"{rss_before:.0f} MB: Python + torch)",
        flush=True,
    )
    del contenders, syn, syn_parts

    dataset = fedloom.load_mnist(mnist_root(args.mnist_root))
    mnist: dict[str, Any] = {}
    models = ["mlp", "logreg"] + ([] if args.skip_cnn else ["cnn"])
    parts_a = iid_parts(100, 40, args.seed)
    for m in models:
        contenders = contenders_for(
            m, dataset, parts_a, per_round=20, batch_size=10, local_epochs=1, lr=0.05,
            seed=args.seed,
        )  # fmt: skip
        rounds = args.cnn_rounds if m == "cnn" else args.rounds
        res = mnist[m] = time_rounds(f"(a) {m}", contenders, rounds=rounds, warmup=args.warmup)
        res["test_accuracy_after"] = test_accuracy(contenders, dataset)
        report(f"(a) mnist 100x40 {m}", res)
        del contenders

    parts_b = iid_parts(1000, 4, args.seed)
    contenders = contenders_for(
        "logreg", dataset, parts_b, per_round=100, batch_size=10, local_epochs=1, lr=0.05,
        seed=args.seed,
    )  # fmt: skip
    small = time_rounds("(b) 1000x4 logreg", contenders, rounds=args.rounds, warmup=args.warmup)
    # a round's median time over its 100 clients: what each client of a round costs, all in
    small["ms_per_client"] = {
        n: 1000 * s["median"] / 100 for n, s in small["seconds_per_round"].items()
    }
    # an overhead only where it is one: the sequential engine does the plain loop's work
    small["sequential_overhead_ms_per_client"] = (
        small["ms_per_client"]["sequential"] - small["ms_per_client"]["plain"]
    )
    report("(b) mnist 1000x4 logreg", small)
    print(
        "(b) ms per client (round median / 100): "
        + ", ".join(f"{n} {v:.3f}" for n, v in small["ms_per_client"].items())
        + "; the sequential engine's overhead over the plain loop "
        + f"{small['sequential_overhead_ms_per_client']:.3f} ms per client",
        flush=True,
    )
    del contenders

    setup = {
        "mnist_a": {
            "clients": 100,
            "samples_per_client": 40,
            "clients_per_round": 20,
            "local_epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
        },
        "mnist_b": {
            "clients": 1000,
            "samples_per_client": 4,
            "clients_per_round": 100,
            "model": "logreg",
            "local_epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
        },
        "seed": args.seed,
        "targets": {
            "fused_speedup_mlp": TARGET_SPEEDUP_MLP,
            "synthetic_10k_round_seconds": TARGET_SYNTHETIC_SECONDS,
            "synthetic_10k_peak_rss_mb": TARGET_SYNTHETIC_RSS_MB,
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    path = write_results(
        "cohorts",
        {"setup": setup, "mnist_100x40": mnist, "mnist_1000x4": small, "synthetic_10k": synthetic},
    )
    print(f"results: {path}  (total {setup['total_seconds']:.0f} s)")
    headlines: dict[str, Any] = {}

    def speedup(res: dict[str, Any], step: str) -> str | None:
        if step not in res["speedup_vs_plain"]:
            return None
        path = res["path"][step]
        return f"{res['speedup_vs_plain'][step]:.2f}" + ("" if path == step else " (fell back)")

    for m, res in mnist.items():
        for step in ("fused", "vmap"):
            if step in res["speedup_vs_plain"]:
                headlines[f"{step}_speedup_{m}"] = speedup(res, step)
    for n in ("fused", "vmap", "plain"):
        if n in small["ms_per_client"]:
            headlines[f"ms_per_client_1000x4_{n}"] = f"{small['ms_per_client'][n]:.3f}"
    headlines["sequential_overhead_ms_per_client_1000x4"] = (
        f"{small['sequential_overhead_ms_per_client']:.3f}"
    )
    for step in ("fused", "vmap"):
        headlines[f"{step}_speedup_logreg_synthetic_10k"] = speedup(synthetic, step)
    for step in ("fused", "vmap"):
        if step in synthetic["seconds_per_round"]:
            headlines[f"synthetic_10k_round_seconds_{step}"] = (
                f"{synthetic['seconds_per_round'][step]['median']:.3f}"
            )
    headlines["synthetic_10k_peak_rss_mb"] = f"{synthetic['peak_rss_mb']:.0f}"
    print_headlines(headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
