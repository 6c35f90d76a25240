"""Hierarchical FL in simulation: flat == FedAvg, 2-level == flat under full participation,
any depth, edge rounds, resume, determinism, per-node metrics and invalid trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_task, tiny_dataset, tiny_mlp, tiny_parts

from fedloom import ClassificationTask, FedAvg, FedAvgM, Federation, FedProx
from fedloom.federation import Callback, load_checkpoint, save_checkpoint
from fedloom.federation.node_metrics import NodeMetrics
from fedloom.simulation.hierarchy import ROUND_STRIDE, HierarchicalClients
from fedloom.topology.graph import Node, Topology


def tree(spec: dict[str, Any], parent: str | None = None, topo: Topology | None = None):
    """A topology from nested dicts: ``{name: (client ids) | {child: ...}}``."""
    topo = topo if topo is not None else Topology()
    for name, below in spec.items():
        clients = tuple(below) if isinstance(below, tuple | list) else ()
        topo.add_node(Node(name, clients=clients))
        if parent is not None:
            topo.add_edge(name, parent)
        if isinstance(below, dict):
            tree(below, name, topo)
    return topo


TWO_LEVEL = {"root": {"a": (0, 1, 2), "b": (3, 4, 5)}}
THREE_LEVEL = {"root": {"r1": {"e1": (0, 1), "e2": (2,)}, "r2": {"e3": (3, 4), "e4": (5,)}}}


def without_seconds(records: list[dict]) -> list[dict]:
    """Round records minus wall-clock times (also inside the per-node metrics)."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in ("seconds", "client_seconds")}
        if "nodes" in r:
            r["nodes"] = {
                n: {k: v for k, v in m.items() if k != "seconds"} for n, m in r["nodes"].items()
            }
        out.append(r)
    return out


def hier_run(
    spec: dict,
    *,
    rounds: int = 3,
    seed: int = 1,
    strategy: Any = None,
    task: Any = None,
    callbacks: tuple = (),
    **backend_kwargs: Any,
) -> Federation:
    task = task if task is not None else make_tiny_task()
    backend = HierarchicalClients(task, tree(spec), seed, **backend_kwargs)
    fed = Federation(
        task,
        strategy if strategy is not None else FedAvg(),
        backend=backend,
        rounds=rounds,
        seed=seed,
        callbacks=[NodeMetrics(), *callbacks],
    )
    fed.run()
    return fed


def make_tiny_task_with(parts: Any) -> ClassificationTask:
    return ClassificationTask(tiny_mlp, tiny_dataset(), parts, lr=0.1, batch_size=4)


# -- flat and 2-level ----------------------------------------------------------------------
def test_flat_topology_is_plain_fedavg_bit_for_bit() -> None:
    task = make_tiny_task()
    plain = Federation(task, FedAvg(clients_per_round=3), rounds=4, seed=7)
    plain.run()
    flat = hier_run(
        {"server": tuple(range(6))}, rounds=4, seed=7, strategy=FedAvg(clients_per_round=3)
    )
    assert flat.backend.flat
    assert torch.equal(flat.params, plain.params)
    assert without_seconds(flat.history) == without_seconds(plain.history)
    assert flat.backend.state_dict().keys() == plain.backend.state_dict().keys()


def test_two_level_full_participation_equals_flat_up_to_rounding() -> None:
    # With every client training once per global round (edge_rounds=1, fraction 1 at every
    # level), edge e returns w_e = sum_{k in e} n_k w_k / N_e and is weighted by N_e (the
    # samples under it), so the root computes sum_e N_e w_e / N = sum_k n_k w_k / N: flat
    # FedAvg's average. Clients are seeded as in the flat run's round (edge round 0 trains
    # under the global round's id), so their models are bit-identical; only the order and
    # grouping of the float32 sums differ, hence allclose, not equal.
    task = make_tiny_task_with(tiny_parts((15,) * 6))  # IID, equal sizes
    flat = Federation(task, FedAvg(fraction=1.0), rounds=3, seed=2)
    flat.run()
    two = hier_run(TWO_LEVEL, rounds=3, seed=2, task=task, strategy=FedAvg(fraction=1.0))
    assert not two.backend.flat
    # float32 sums of 6 weighted models regrouped: <= 6 eps32 (6e-8) x |w| <= 3 = 1e-6 a round;
    # 3 rounds, each error carried through <= 4 SGD steps of lr 0.1 (|x| <= 8): x 10 -> 2e-5
    assert torch.allclose(two.params, flat.params, rtol=0, atol=2e-5)
    for h, f in zip(two.history, flat.history):
        assert h["accuracy"] == f["accuracy"]  # counts of argmaxes: no margin is ~1e-5 thin
        assert h["train_loss"] == pytest.approx(f["train_loss"], rel=1e-4)  # |dL/dw| x 2e-5
        assert h["samples"] == f["samples"] == 90
    assert [r["clients"] for r in two.history] == [2, 2, 2]  # the root's clients are edges


# -- deeper trees, edge rounds, metrics ----------------------------------------------------
class Updates(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str, str | None]] = []

    def on_update(self, fed: Federation, update, error: str | None) -> None:
        self.seen.append((update.client_id, update.num_samples, update.extras["node"], error))


def test_three_level_tree_trains_and_reports_per_node() -> None:
    task = make_tiny_task()
    before = Federation(task, FedAvg(), rounds=1, seed=3).evaluate()["test_loss"]
    seen = Updates()
    fed = hier_run(
        THREE_LEVEL,
        rounds=6,
        seed=3,
        task=task,
        edge_rounds={"r1": 2, "e3": 3},
        callbacks=(seen,),
    )
    assert fed.history[-1]["test_loss"] < before
    assert fed.backend.names == ["r1", "r2"] and fed.backend.ids == {"r1": 0, "r2": 1}
    # the root's updates are its regions, weighted by every sample under them
    sizes = [task.num_samples(c) for c in range(6)]
    assert seen.seen[:2] == [(0, sum(sizes[:3]), "r1", None), (1, sum(sizes[3:]), "r2", None)]
    nodes = fed.history[-1]["nodes"]
    assert set(nodes) == {"r1", "r2", "e1", "e2", "e3", "e4"}
    # r1 runs 2 rounds, each running e1 and e2 once: 2 x (2 + 1) client trainings
    assert nodes["r1"]["rounds"] == 2 and nodes["r1"]["client_updates"] == 6
    assert nodes["e1"]["runs"] == 2 and nodes["e1"]["client_updates"] == 4
    # r2 runs once; e3 runs 3 rounds of its 2 clients
    assert nodes["e3"]["rounds"] == 3 and nodes["r2"]["client_updates"] == 3 * 2 + 1
    wire = fed.backend.wire_bytes
    assert wire == fed.wire_bytes
    assert nodes["e1"]["bytes_down"] == nodes["e1"]["bytes_up"] == 2 * 2 * wire
    assert all(m["loss"] == m["loss"] for m in nodes.values())  # no NaN
    assert fed.backend.node_rounds == {"r1": 12, "r2": 6, "e1": 12, "e2": 12, "e3": 18, "e4": 6}


def test_edge_rounds_change_the_result() -> None:
    one = hier_run(TWO_LEVEL, edge_rounds=1)
    two = hier_run(TWO_LEVEL, edge_rounds=2)
    assert not torch.equal(one.params, two.params)
    assert two.history[0]["nodes"]["a"]["client_updates"] == 2 * 3


def test_edge_sampling_weight_and_per_edge_strategies() -> None:
    """Edges sample with their own strategy; an edge weighs with all its samples (HierFAVG)."""
    seen = Updates()
    task = make_tiny_task()
    fed = hier_run(
        TWO_LEVEL,
        rounds=2,
        task=task,
        edge_strategy={"a": FedAvg(clients_per_round=1), "b": lambda name: FedAvgM(momentum=0.5)},
        callbacks=(seen,),
    )
    assert isinstance(fed.backend.strategies["b"], FedAvgM)
    assert fed.history[0]["nodes"]["a"]["client_updates"] == 1
    assert fed.history[0]["nodes"]["b"]["client_updates"] == 3
    assert seen.seen[0][1] == sum(task.num_samples(c) for c in (0, 1, 2))
    one = FedAvg(clients_per_round=2)
    backend = HierarchicalClients(task, tree(TWO_LEVEL), edge_strategy=one)
    assert backend.strategies["a"] is not backend.strategies["b"]  # copied per node
    assert backend.strategies["a"] is not one


def test_clients_train_under_distinct_round_ids_per_edge_round() -> None:
    rounds: list[int] = []

    class Rounds(ClassificationTask):
        def train_an_epoch(self, model, optimizer, ctx):
            rounds.append((ctx.round, ctx.client_id))
            return super().train_an_epoch(model, optimizer, ctx)

    task = make_tiny_task(Rounds)
    hier_run({"root": {"a": (0,), "b": (1, 2, 3, 4, 5)}}, rounds=2, task=task, edge_rounds=2)
    assert (1, 0) in rounds and (1 + ROUND_STRIDE, 0) in rounds and (2 + ROUND_STRIDE, 0) in rounds
    assert len(set(rounds)) == len(rounds) == 2 * 2 * 6


# -- determinism and resume ------------------------------------------------------------------
def test_two_runs_are_identical() -> None:
    kw: dict[str, Any] = {"edge_strategy": FedAvg(clients_per_round=1), "edge_rounds": 2}
    a = hier_run(THREE_LEVEL, strategy=FedAvg(clients_per_round=1), **kw)
    b = hier_run(THREE_LEVEL, strategy=FedAvg(clients_per_round=1), **kw)
    assert torch.equal(a.params, b.params)
    assert without_seconds(a.history) == without_seconds(b.history)


class Momentum(ClassificationTask):
    keep_optimizer_state = True  # per-client state in the engine: part of the checkpoint


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    def make(rounds: int) -> Federation:
        task = make_tiny_task(Momentum, momentum=0.5)
        backend = HierarchicalClients(
            task,
            tree(THREE_LEVEL),
            seed=4,
            edge_strategy=lambda name: FedAvgM(momentum=0.5, clients_per_round=1),
            edge_rounds={"r1": 2, "e3": 2},
        )
        return Federation(
            task,
            FedAvgM(momentum=0.5, clients_per_round=1),
            backend=backend,
            rounds=rounds,
            seed=4,
            callbacks=[NodeMetrics()],
        )

    full = make(5)
    full.run()
    first = make(2)
    first.run()
    path = save_checkpoint(tmp_path / "ck.pt", first.state_dict())
    state = load_checkpoint(path)  # weights_only: the backend's state must be plain data
    assert state["backend"]["clients"] and set(state["backend"]["nodes"]) == set(
        first.backend.strategies
    )
    second = make(5)
    second.load_state_dict(state)
    second.run()
    assert torch.equal(second.params, full.params)
    assert without_seconds(second.history) == without_seconds(full.history)
    assert second.backend.node_rounds == full.backend.node_rounds
    other = HierarchicalClients(make_tiny_task(), tree(TWO_LEVEL), seed=4)
    with pytest.raises(ValueError, match="same topology"):
        other.load_state_dict(state["backend"])


# -- invalid input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"root": {"a": (0, 1, 2), "b": ()}}, "'b' has no clients and no child nodes"),
        ({"root": {"a": (0, 1, 99)}}, "'a'.*99.*out of range"),
        ({"root": {"a": (0, 1, 2), "b": (2, 3)}}, "client 2 .*'a'.*'b'"),
        ({"root": {"a": (0, -1)}}, "'a'"),
    ],
)
def test_invalid_trees_name_the_node(spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HierarchicalClients(make_tiny_task(), tree(spec))


def test_invalid_structure_and_arguments() -> None:
    task = make_tiny_task()
    mixed = tree({"root": {"a": (0, 1)}})
    mixed.nodes["a"] = Node("a", clients=(0, 1))
    mixed.add_node(Node("x", clients=(2,)))
    mixed.add_edge("x", "a")
    with pytest.raises(ValueError, match="'a' has both clients and child nodes"):
        HierarchicalClients(task, mixed)
    two_roots = tree({"r1": (0,), "r2": (1,)})
    with pytest.raises(ValueError, match="2 roots"):
        HierarchicalClients(task, two_roots)
    assert HierarchicalClients(task, two_roots, root="r2").available_clients(1) == [1]
    with pytest.raises(ValueError, match=r"'a'.*edge_rounds"):
        HierarchicalClients(task, tree(TWO_LEVEL), edge_rounds={"a": 0})
    with pytest.raises(ValueError, match="'zz'"):
        HierarchicalClients(task, tree(TWO_LEVEL), edge_rounds={"zz": 2})
    with pytest.raises(ValueError, match="root 'root'"):
        HierarchicalClients(task, tree(TWO_LEVEL), edge_strategy={"root": FedAvg()})
    shared = FedAvg()
    with pytest.raises(ValueError, match="share one strategy"):
        HierarchicalClients(task, tree(TWO_LEVEL), edge_strategy={"a": shared, "b": shared})
    with pytest.raises(ValueError, match="edge_strategy"):  # a client part at the root
        hier_run(TWO_LEVEL, strategy=FedProx(mu=0.1))


def test_fedprox_at_the_edges_runs() -> None:
    fed = hier_run(TWO_LEVEL, rounds=2, edge_strategy=FedProx(mu=0.1))
    assert fed.history[-1]["nodes"]["a"]["client_updates"] == 3
