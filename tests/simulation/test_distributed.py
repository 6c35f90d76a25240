"""torchrun simulation: 2 ranks give the same parameters as one process, for a plain strategy
and for one whose clients send tensors back (SCAFFOLD), and refuse what they cannot resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedloom import Experiment
from fedloom.wire import decode

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def config(out: Path, strategy: dict, **output) -> dict:
    return {
        "name": "dist",
        "seed": 3,
        "rounds": 2,
        "data": {"dataset": "mnist5k", "num_clients": 8, "partition": "dirichlet"},
        "model": {"name": "mlp"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"clients_per_round": 5, **strategy},
        "output": {
            "dir": out.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
            **output,
        },
    }


def torchrun(cfg: dict, path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, str(nproc), "-m", "fedloom", "run", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def final_params(cfg: dict, spec) -> torch.Tensor:
    data = (Path(cfg["output"]["dir"]) / cfg["name"] / "model.safetensors").read_bytes()
    return decode(data, spec)[0]


@pytest.mark.parametrize(
    "strategy,output",
    [
        ({"name": "fedavg"}, {}),
        ({"name": "scaffold"}, {"checkpoint": False}),  # delta_c rows exchanged too
    ],
)
def test_two_ranks_equal_one_process(tmp_path, strategy, output):
    cfg = config(tmp_path / "dist", strategy, **output)
    done = torchrun(cfg, tmp_path / "cfg.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fedloom: dist: 2 rounds") == 1  # rank 0 reports, alone
    one = Experiment.from_config(config(tmp_path / "one", strategy, **output))
    result = one.run()
    assert torch.equal(final_params(cfg, one.federation.spec), result.params)
    metrics = [
        json.loads(line)
        for line in (tmp_path / "dist" / "dist" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["accuracy"] for m in metrics] == [r["accuracy"] for r in result.history]


def test_per_client_state_is_not_checkpointed_across_ranks_silently(tmp_path):
    cfg = config(tmp_path / "dist", {"name": "scaffold"})  # checkpoints on: refused clearly
    done = torchrun(cfg, tmp_path / "cfg.json")
    assert done.returncode != 0
    assert "not gathered across torchrun ranks" in done.stdout + done.stderr
