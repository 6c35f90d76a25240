"""A ``[topology]`` config runs the hierarchical simulation end to end and keeps metrics per
node in the run directory; a flat topology is the plain run."""

from __future__ import annotations

import json

import torch

from fedloom import Experiment


def config(out, topology):
    return {
        "name": "topo",
        "seed": 1,
        "rounds": 2,
        "data": {"dataset": "mnist5k", "num_clients": 8, "partition": "dirichlet"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": 4},
        "output": {"dir": str(out), "progress": False, "tensorboard": False, "figures": False},
        **({"topology": topology} if topology else {}),
    }


def test_a_topology_config_runs_hierarchically_with_metrics_per_node(tmp_path):
    topology = {
        "nodes": [
            {"name": "root", "address": "127.0.0.1:50100"},
            {"name": "a", "clients": "0-3"},
            {"name": "b", "clients": "4-7"},
        ],
        "edges": [["a", "root"], ["b", "root"]],
        "edge_rounds": 2,
        "edge_strategy": {"clients_per_round": 2},
    }
    exp = Experiment.from_config(config(tmp_path, topology))
    result = exp.run()
    lines = (tmp_path / "topo" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["clients"] for r in records] == [2, 2]  # the root's "clients" are its edges
    assert set(records[-1]["nodes"]) == {"a", "b"}
    assert records[-1]["nodes"]["a"]["client_updates"] == 4  # 2 edge rounds x 2 clients
    flat_topology = {"nodes": [{"name": "root", "clients": "0-7"}], "edges": []}
    flat = Experiment.from_config(config(tmp_path / "flat", flat_topology)).run()
    plain = Experiment.from_config(config(tmp_path / "plain", None)).run()
    assert torch.equal(flat.params, plain.params)
    assert not torch.equal(result.params, plain.params)
