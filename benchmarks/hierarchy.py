"""Hierarchical FedAvg (HierFAVG) vs flat FedAvg on MNIST Dirichlet(0.5): root traffic and accuracy.

What is measured, per global round: the root model's accuracy on the 10k MNIST test set and
the cumulative bytes over the ROOT's links (models sent down plus models sent up, each
counted at its wire size, ``fedloom.encode`` of the flat parameters), plus, separately, the
bytes over the edge aggregators' links to their clients. Three runs:

* ``flat``: plain FedAvg, 10 of the 100 clients per round; the root talks to 10 clients;
* ``hier_er2``: 2-level HierFAVG, 100 clients under 5 edges (clients 20e..20e+19 under edge
  e), each edge samples 2 of its clients per edge round and runs 2 edge rounds per global
  round, the root aggregates all 5 edges weighted by the samples under them; the root talks
  to 5 edges, and 20 clients train per global round;
* ``hier_er1``: the same with 1 edge round, i.e. 10 clients train per global round, as flat.

Setting: the FedAvg paper's MLP (784-200-200-10), E=1, B=10, SGD lr 0.05, 60k training
samples split over 100 clients of 600 by fedloom's ``Dirichlet(alpha=0.5)`` (label skew, equal
sizes, seeded), one intra-op torch thread. All three start from the same initial model (the
run seed). Accuracy per round compares what a root round buys; the client trainings per round
are recorded too, since ``hier_er2`` trains twice as many clients per root round.

    .venv/bin/python benchmarks/hierarchy.py [--rounds 30] [--seed 0] [--mnist-root DIR]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from common import mnist_root, print_headlines, write_results

import fedloom
from fedloom.federation.node_metrics import NodeMetrics
from fedloom.simulation.hierarchy import HierarchicalClients
from fedloom.topology.graph import Node, Topology

NUM_CLIENTS, NUM_EDGES, ALPHA = 100, 5, 0.5
MB = 1e6


def make_task(dataset: fedloom.TensorDataset, seed: int) -> fedloom.ClassificationTask:
    """MNIST split by Dirichlet(0.5) over 100 clients; the FedAvg paper's 2NN."""
    return fedloom.ClassificationTask(
        lambda: fedloom.build_model("mlp", (1, 28, 28), 10),
        dataset,
        fedloom.Dirichlet(NUM_CLIENTS, alpha=ALPHA),
        seed=seed,
        lr=0.05,
        batch_size=10,
        local_epochs=1,
    )


def edge_topology() -> Topology:
    """root <- edge0..edge4, edge e holding clients 20e..20e+19 (Dirichlet clients are drawn
    independently, so contiguous ids make edges of mixed label skew)."""
    topo = Topology()
    topo.add_node(Node("root"))
    per = NUM_CLIENTS // NUM_EDGES
    for e in range(NUM_EDGES):
        topo.add_node(Node(f"edge{e}", clients=tuple(range(e * per, (e + 1) * per))))
        topo.add_edge(f"edge{e}", "root")
    return topo


def run(
    label: str, task: fedloom.ClassificationTask, args: argparse.Namespace, edge_rounds: int
) -> dict[str, Any]:
    """One run; ``edge_rounds == 0`` means flat FedAvg."""
    if edge_rounds:
        backend: Any = HierarchicalClients(
            task,
            edge_topology(),
            args.seed,
            edge_strategy=fedloom.FedAvg(clients_per_round=2),
            edge_rounds=edge_rounds,
        )
        strategy = fedloom.FedAvg(fraction=1.0)
    else:
        backend, strategy = None, fedloom.FedAvg(clients_per_round=10)
    traffic = Traffic(label)
    fed = fedloom.Federation(
        task,
        strategy,
        backend,
        rounds=args.rounds,
        seed=args.seed,
        callbacks=[NodeMetrics(), traffic],  # NodeMetrics first: it fills record["nodes"]
    )
    t0 = time.perf_counter()
    fed.run()
    return {
        "edge_rounds": edge_rounds or None,
        "wire_bytes": fed.wire_bytes,
        "accuracy": traffic.accuracy,
        "root_link_bytes": traffic.root_bytes,
        "edge_link_bytes": traffic.edge_bytes,
        "client_trainings": traffic.trainings,
        "final_accuracy": traffic.accuracy[-1],
        "best_accuracy": max(traffic.accuracy),
        "mean_accuracy_last5": sum(traffic.accuracy[-5:]) / len(traffic.accuracy[-5:]),
        "seconds": time.perf_counter() - t0,
    }


class Traffic(fedloom.Callback):
    """Per round: accuracy and cumulative bytes on the root's and the edges' links.

    Root links: the Federation's own ``bytes_down + bytes_up`` (models sent to the root's
    clients, which are the edges in a hierarchy, and models received). Edge links: each
    edge's ``bytes_down + bytes_up`` from the hierarchy's per-node metrics.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.accuracy: list[float] = []
        self.root_bytes: list[int] = []
        self.edge_bytes: list[int] = []
        self.trainings: list[int] = []

    def on_round_end(self, fed: fedloom.Federation, record: dict[str, Any]) -> None:
        nodes = record.get("nodes", {})
        root = record["bytes_down"] + record["bytes_up"]
        edge = sum(m["bytes_down"] + m["bytes_up"] for m in nodes.values())
        trained = sum(m["client_updates"] for m in nodes.values()) if nodes else record["clients"]
        self.accuracy.append(record["accuracy"])
        self.root_bytes.append(root + (self.root_bytes[-1] if self.root_bytes else 0))
        self.edge_bytes.append(edge + (self.edge_bytes[-1] if self.edge_bytes else 0))
        self.trainings.append(trained + (self.trainings[-1] if self.trainings else 0))
        print(
            f"{self.label:9s} round {record['round']:3d}  accuracy {record['accuracy']:.4f}  "
            f"root MB {self.root_bytes[-1] / MB:8.2f}  edge MB {self.edge_bytes[-1] / MB:8.2f}  "
            f"client trainings {self.trainings[-1]:5d}  ({record['seconds']:.1f} s)",
            flush=True,
        )


def first_round_reaching(accuracy: Sequence[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracy) if a >= target), None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="global (root) rounds per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--target", type=float, default=0.9, help="accuracy for rounds-to-target")
    p.add_argument("--mnist-root", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = fedloom.load_mnist(mnist_root(args.mnist_root))
    task = make_task(dataset, args.seed)
    t0 = time.perf_counter()
    runs = {
        "flat": run("flat", task, args, 0),
        "hier_er2": run("hier_er2", task, args, 2),
        "hier_er1": run("hier_er1", task, args, 1),
    }
    for r in runs.values():
        r["rounds_to_target"] = first_round_reaching(r["accuracy"], args.target)
    flat_root = runs["flat"]["root_link_bytes"][-1]
    results = {
        "args": vars(args),
        "setting": {
            "dataset": "mnist",
            "clients": NUM_CLIENTS,
            "partition": f"dirichlet({ALPHA})",
            "model": "mlp 784-200-200-10",
            "local_epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "flat": "FedAvg, 10 clients per round",
            "hier": f"{NUM_EDGES} edges x {NUM_CLIENTS // NUM_EDGES} clients, edge FedAvg "
            "2 clients per edge round, root FedAvg over all edges",
        },
        "runs": runs,
        "root_bytes_ratio_flat_over_hier": flat_root / runs["hier_er2"]["root_link_bytes"][-1],
        "total_seconds": time.perf_counter() - t0,
    }
    path = write_results("hierarchy", results)
    print(f"results: {path}", flush=True)
    heads: dict[str, Any] = {}
    for label, r in runs.items():
        heads[f"{label}_final_accuracy"] = f"{r['final_accuracy']:.4f}"
        heads[f"{label}_mean_accuracy_last5"] = f"{r['mean_accuracy_last5']:.4f}"
        heads[f"{label}_root_link_mb"] = f"{r['root_link_bytes'][-1] / MB:.2f}"
        if r["edge_rounds"]:  # flat has no edge links: its root talks to the clients
            heads[f"{label}_edge_link_mb"] = f"{r['edge_link_bytes'][-1] / MB:.2f}"
        heads[f"{label}_rounds_to_{args.target}"] = r["rounds_to_target"]
    heads["root_link_bytes_ratio_flat_over_hier"] = (
        f"{results['root_bytes_ratio_flat_over_hier']:.2f}"
    )
    print_headlines(heads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
