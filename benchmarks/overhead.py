"""Framework overhead: a FedAvg round through fedloom vs. the same round as plain PyTorch.

What is measured: wall-clock seconds of one FedAvg training round (20 sampled clients, each
loading the global model, one local epoch of SGD with batch 10 on its 40 samples, and the
sample-weighted average of the resulting weights becoming the new global model), for the
FedAvg paper's CNN and its 784-200-200-10 MLP on MNIST.

Why the comparison is fair:

* same model architecture and the same initial weights (built under the same seed),
* same data: the MNIST training tensors in memory, the first 4000 samples split IID into
  100 clients of 40 with a fixed seed; both contenders index the very same tensors,
* same work per round: 20 clients, E=1, B=10 (4 steps per client), lr 0.05, a fresh
  ``torch.optim.SGD`` per client, cross-entropy, weighted average of every float tensor,
* no evaluation, checkpointing, logging or progress output inside the timed part: fedloom's
  ``Federation`` is built with no callbacks, ``rounds`` far beyond what is run and
  ``eval_every=10**6``, and ``fed.run_round(r)`` is called directly,
* both are warmed up (untimed rounds: the first optimizer step pays for lazy imports),
* the contenders alternate round by round, and which one goes first flips every pair, so
  machine noise (other processes on 2 cores) hits both alike; medians are reported, plus the
  median of the per-pair ratios, which is robust to slow drift of the machine's speed,
* one torch intra-op thread by default (``--threads``): on a shared 2-core machine two
  OpenMP threads contend with any other busy process and a step then takes 10-100x longer
  (measured: MLP step 0.8 ms with 1 thread, 140 ms with 2 while another job held a core),
  which drowns any framework difference. One thread also makes the compute per step slower,
  so the ratio measured here is, if anything, kinder to fedloom than a 2-thread run on an
  idle machine; rerun with ``--threads 2`` on a quiet machine to check.

The plain loop is what a competent PyTorch user writes by hand: one model, per client
``load_state_dict(global_state)``, ``torch.randperm`` shuffling, batches by tensor indexing,
``zero_grad``/forward/``cross_entropy``/``backward``/``step``, then the weighted sum of
``model.state_dict()``'s float tensors accumulated into a running sum. Accuracy of both global
models on the 10k test set after the timed rounds is printed as a sanity check (not asserted):
the two runs sample and shuffle differently, so they agree only roughly.

    .venv/bin/python benchmarks/overhead.py [--rounds 24] [--warmup 2] [--models cnn,mlp]
    .venv/bin/python benchmarks/overhead.py --profile 5   # cProfile both, print the top calls
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import median, mnist_root, print_headlines, write_results
from torch import nn

import fedloom
from fedloom.seeding import derive_seed

NUM_CLIENTS = 100
SAMPLES_PER_CLIENT = 40
CLIENTS_PER_ROUND = 20
LOCAL_EPOCHS = 1
BATCH_SIZE = 10
LR = 0.05
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
TARGET_RATIO = 1.10


def iid_parts(num_clients: int, per_client: int, seed: int) -> list[np.ndarray]:
    """The first ``num_clients * per_client`` training samples, shuffled and dealt out evenly."""
    perm = np.random.default_rng(seed).permutation(num_clients * per_client)
    return [np.sort(p) for p in np.split(perm, num_clients)]


def build_initial_model(name: str, seed: int) -> nn.Module:
    """The model with the initial weights fedloom's Federation gives it for ``seed``."""
    torch.manual_seed(derive_seed(seed, "init"))
    return fedloom.build_model(name, INPUT_SHAPE, NUM_CLASSES)


class PlainFedAvg:
    """FedAvg as a plain PyTorch loop: one model, ``state_dict`` in, ``state_dict`` out."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        parts: Sequence[np.ndarray],
        *,
        clients_per_round: int,
        local_epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ):
        self.model, self.x, self.y = model, x, y
        self.parts = [torch.as_tensor(p, dtype=torch.int64) for p in parts]
        self.clients_per_round, self.local_epochs = clients_per_round, local_epochs
        self.batch_size, self.lr = batch_size, lr
        self.global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.float_keys = [k for k, v in self.global_state.items() if v.is_floating_point()]
        self.rng = np.random.default_rng(seed)
        # its own generator, so fedloom's per-client reseeding does not change this run
        self.gen = torch.Generator().manual_seed(seed)

    def run_round(self) -> None:
        model = self.model
        clients = self.rng.choice(len(self.parts), size=self.clients_per_round, replace=False)
        total = float(sum(len(self.parts[c]) for c in clients))
        running = {k: torch.zeros_like(self.global_state[k]) for k in self.float_keys}
        model.train()
        for c in clients:
            model.load_state_dict(self.global_state)
            optimizer = torch.optim.SGD(model.parameters(), lr=self.lr)
            idx = self.parts[c]
            for _ in range(self.local_epochs):
                order = idx[torch.randperm(len(idx), generator=self.gen)]
                for i in range(0, len(order), self.batch_size):
                    batch = order[i : i + self.batch_size]
                    xb, yb = self.x[batch], self.y[batch]
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    optimizer.step()
            weight = len(idx) / total
            state = model.state_dict()
            for k in self.float_keys:
                running[k].add_(state[k], alpha=weight)
        self.global_state.update(running)

    def global_model(self) -> nn.Module:
        self.model.load_state_dict(self.global_state)
        return self.model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Test accuracy of ``model``; the same function judges both contenders."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train(was_training)
    return correct / len(y)


def build_task(model_name: str, dataset: fedloom.TensorDataset, parts: list[np.ndarray]):
    return fedloom.ClassificationTask(
        partial(fedloom.build_model, model_name, INPUT_SHAPE, NUM_CLASSES),
        dataset,
        parts,
        lr=LR,
        batch_size=BATCH_SIZE,
        local_epochs=LOCAL_EPOCHS,
    )


def build_federation(task, seed: int, backend=None) -> fedloom.Federation:
    """fedloom's Federation with no callbacks and no evaluation in the timed rounds."""
    return fedloom.Federation(
        task,
        fedloom.FedAvg(clients_per_round=CLIENTS_PER_ROUND),
        backend,
        rounds=10**6,
        seed=seed,
        eval_every=10**6,
    )


def build_contenders(
    model_name: str, dataset: fedloom.TensorDataset, parts: list[np.ndarray], seed: int
) -> tuple[fedloom.Federation, PlainFedAvg]:
    """fedloom's Federation (no callbacks, no evaluation) and the plain loop, same setup."""
    fed = build_federation(build_task(model_name, dataset, parts), seed)
    plain = PlainFedAvg(
        build_initial_model(model_name, seed),
        dataset.train_x,
        dataset.train_y,
        parts,
        clients_per_round=CLIENTS_PER_ROUND,
        local_epochs=LOCAL_EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=seed,
    )
    if not torch.equal(
        fed.params, torch.cat([p.detach().reshape(-1) for p in plain.model.parameters()])
    ):
        raise RuntimeError("fedloom and the plain loop do not start from the same weights")
    return fed, plain


def bench_model(
    model_name: str,
    dataset: fedloom.TensorDataset,
    parts: list[np.ndarray],
    *,
    rounds: int,
    warmup: int,
    seed: int,
    pool: int = 0,
) -> dict[str, Any]:
    """Warm all up, then time ``rounds`` alternating rounds of each; medians and ratios.

    With ``pool`` > 0 a third contender runs the same Federation on ``pool`` worker
    processes (:class:`fedloom.ProcessPoolClients`, one torch thread each)."""
    fed, plain = build_contenders(model_name, dataset, parts, seed)
    state = {"round": 0, "pool_round": 0}

    def fedloom_round() -> None:
        state["round"] += 1
        fed.run_round(state["round"])

    contenders: dict[str, Callable[[], None]] = {"fedloom": fedloom_round, "plain": plain.run_round}
    workers = None
    if pool:
        task = build_task(model_name, dataset, parts)
        workers = fedloom.ProcessPoolClients(task, seed, workers=pool)
        pooled = build_federation(task, seed, workers)

        def pool_round() -> None:
            state["pool_round"] += 1
            pooled.run_round(state["pool_round"])

        contenders["pool"] = pool_round
    t0 = time.perf_counter()
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    warmup_s = time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
        print(
            f"  {model_name} pair {i + 1:3d}/{rounds}: "
            + ", ".join(f"{n} {times[n][-1]:.4f} s" for n in names),
            flush=True,
        )
    if workers is not None:
        same = state["round"] == state["pool_round"] and torch.equal(pooled.params, fed.params)
        workers.close()

    med = {name: median(ts) for name, ts in times.items()}
    pair_ratios = [f / p for f, p in zip(times["fedloom"], times["plain"])]
    acc = {
        "fedloom": accuracy(fed.model, dataset.test_x, dataset.test_y),
        "plain": accuracy(plain.global_model(), dataset.test_x, dataset.test_y),
    }
    out = {
        "model": model_name,
        "params": fed.spec.numel,
        "measured_rounds": rounds,
        "warmup_rounds": warmup,
        "warmup_seconds_both": warmup_s,
        "seconds_per_round": {
            name: {
                "median": med[name],
                "min": min(ts),
                "max": max(ts),
                "all": ts,
            }
            for name, ts in times.items()
        },
        "ratio_of_medians": med["fedloom"] / med["plain"],
        "median_pair_ratio": median(pair_ratios),
        "ratio_of_minimums": min(times["fedloom"]) / min(times["plain"]),
        "rounds_trained_each": warmup + rounds,
        "test_accuracy_after": acc,
    }
    if pool:
        out["pool_workers"] = pool
        out["pool_vs_plain_ratio_of_medians"] = med["pool"] / med["plain"]
        out["pool_vs_plain_median_pair_ratio"] = median(
            [q / p for q, p in zip(times["pool"], times["plain"])]
        )
        out["pool_vs_fedloom_ratio_of_medians"] = med["pool"] / med["fedloom"]
        out["pool_params_equal_in_process"] = same
    return out


def profile_model(
    model_name: str,
    dataset: fedloom.TensorDataset,
    parts: list[np.ndarray],
    *,
    rounds: int,
    warmup: int,
    seed: int,
    top: int = 25,
) -> None:
    """cProfile ``rounds`` rounds of each contender (after warm-up) and print the top calls."""
    fed, plain = build_contenders(model_name, dataset, parts, seed)
    for r in range(1, warmup + 1):
        fed.run_round(r)
        plain.run_round()
    for name, fn in (
        ("fedloom", lambda: [fed.run_round(warmup + r) for r in range(1, rounds + 1)]),
        ("plain", lambda: [plain.run_round() for _ in range(rounds)]),
    ):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"===== {model_name} / {name}: {rounds} rounds, sorted by own time =====")
        print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=24, help="measured rounds per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per contender")
    parser.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument(
        "--pool", type=int, default=0, metavar="N", help="also time N worker processes"
    )
    parser.add_argument("--mnist-root", default=None, help="default: $FEDLOOM_MNIST or shared")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile N rounds of each instead"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"cnn", "mlp"})
    if unknown:
        parser.error(f"unknown models {unknown}; choose from cnn, mlp")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)

    dataset = fedloom.load_mnist(mnist_root(args.mnist_root))
    parts = iid_parts(NUM_CLIENTS, SAMPLES_PER_CLIENT, args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {NUM_CLIENTS} clients x "
        f"{SAMPLES_PER_CLIENT} samples, {CLIENTS_PER_ROUND} per round, E={LOCAL_EPOCHS}, "
        f"B={BATCH_SIZE}, lr={LR}",
        flush=True,
    )

    if args.profile:
        for m in models:
            profile_model(
                m, dataset, parts, rounds=args.profile, warmup=args.warmup, seed=args.seed
            )
        return 0

    per_model: dict[str, dict[str, Any]] = {}
    for m in models:
        res = per_model[m] = bench_model(
            m,
            dataset,
            parts,
            rounds=args.rounds,
            warmup=args.warmup,
            seed=args.seed,
            pool=args.pool,
        )
        s, acc = res["seconds_per_round"], res["test_accuracy_after"]
        print(
            f"{m}: fedloom {s['fedloom']['median']:.4f} s/round, plain {s['plain']['median']:.4f} "
            f"s/round (medians of {args.rounds}); ratio {res['ratio_of_medians']:.3f}, "
            f"median pair ratio {res['median_pair_ratio']:.3f}; test accuracy after "
            f"{res['rounds_trained_each']} rounds: fedloom {acc['fedloom']:.4f}, "
            f"plain {acc['plain']:.4f}",
            flush=True,
        )

    setup = {
        "num_clients": NUM_CLIENTS,
        "samples_per_client": SAMPLES_PER_CLIENT,
        "clients_per_round": CLIENTS_PER_ROUND,
        "local_epochs": LOCAL_EPOCHS,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "seed": args.seed,
        "target_ratio": TARGET_RATIO,
    }
    path = write_results("overhead", {"setup": setup, "models": per_model})
    print(f"results: {path}")
    headlines: dict[str, Any] = {}
    for m, res in per_model.items():
        headlines[f"overhead_ratio_{m}"] = f"{res['ratio_of_medians']:.2f}"
        if args.pool:
            ratio = res["pool_vs_plain_ratio_of_medians"]
            headlines[f"pool{args.pool}_vs_plain_ratio_{m}"] = f"{ratio:.2f}"
    for m, res in per_model.items():
        s = res["seconds_per_round"]
        headlines[f"fedloom_seconds_per_round_{m}"] = f"{s['fedloom']['median']:.4f}"
        headlines[f"plain_seconds_per_round_{m}"] = f"{s['plain']['median']:.4f}"
    print_headlines(headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
