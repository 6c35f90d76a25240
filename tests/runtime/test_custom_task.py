"""A config's own Task (``[task] factory``) deployed: ``fedloom launch`` (an aggregator and
clients as processes) and ``torchrun -m fedloom run`` give the simulation's model bit for bit.
Every process imports ``examples.custom_task`` from the working directory (the repo root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, read_metrics, run_dir, saved_params, simulate, write_config


def regression_config(out_dir: Path, name: str) -> dict:
    """The example's regression task with 2 clients, both trained each round, 2 rounds."""
    return {
        "name": name,
        "seed": 5,
        "rounds": 2,
        "task": {
            "factory": "examples.custom_task:make_task",
            "options": {"clients": 2, "samples": 48, "local_epochs": 2},
        },
        "strategy": {"name": "fedavg", "clients_per_round": 2},
        "output": {
            "dir": out_dir.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
        "runtime": {"task_id": "custom-task"},
    }


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_launch_runs_the_custom_task_and_matches_the_simulation(tmp_path, procs, at_root):
    cfg = regression_config(tmp_path / "net", "launched")
    config = write_config(tmp_path / "launched.json", cfg)
    proc = procs.fedloom("launch", "launch", "--nproc", "3", str(config))
    assert proc.wait(120) == 0, proc.output()
    assert "aggregator done: 2 rounds (max_rounds); mse " in proc.output()
    assert [r["clients"] for r in read_metrics(run_dir(cfg))] == [2, 2]
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)


def test_torchrun_runs_the_custom_task_and_matches_the_simulation(tmp_path, at_root):
    cfg = regression_config(tmp_path / "dist", "torchrun")
    config = write_config(tmp_path / "torchrun.json", cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FEDLOOM_PORT"):
        env.pop(var, None)
    done = subprocess.run(
        [*cmd, "-m", "fedloom", "run", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fedloom: torchrun: 2 rounds") == 1  # rank 0 reports, alone
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
    assert [r["mse"] for r in read_metrics(run_dir(cfg))] == [r["mse"] for r in sim.history]


def test_launch_names_a_missing_factory_once_before_starting_processes(tmp_path, procs, at_root):
    cfg = regression_config(tmp_path / "net", "missing")
    cfg["task"]["factory"] = "examples.custom_task:no_such_factory"
    config = write_config(tmp_path / "missing.json", cfg)
    proc = procs.fedloom("launch", "launch", "--nproc", "3", str(config))
    assert proc.wait(60) == 2
    lines = proc.output().strip().splitlines()
    assert lines == [
        "fedloom: error: task.factory = 'examples.custom_task:no_such_factory': module "
        "'examples.custom_task' has no attribute 'no_such_factory'"
    ]


def test_a_launched_topology_runs_the_custom_task_and_matches_the_simulation(
    tmp_path, procs, at_root
):
    """A root, one relay (``fedloom node``) and its 2 clients, started from one config."""
    from fedloom.deploy.launch import free_port

    cfg = regression_config(tmp_path / "net", "relayed")
    root, edge = (f"127.0.0.1:{free_port()}" for _ in range(2))
    cfg["strategy"]["clients_per_round"] = 1  # the root's one relay
    cfg["topology"] = {
        "nodes": [
            {"name": "root", "address": root},
            {"name": "a", "address": edge, "clients": "0-1"},
        ],
        "edges": [["a", "root"]],
        "edge_rounds": 2,
        "edge_strategy": {"clients_per_round": 2},
    }
    config = write_config(tmp_path / "relayed.json", cfg)
    proc = procs.fedloom("launch", "launch", str(config))
    assert proc.wait(120) == 0, proc.output()
    assert "[node a]" in proc.output() and "[client 1]" in proc.output()
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
