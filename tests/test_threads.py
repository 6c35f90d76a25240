"""README's "bit-identical" claims at DEFAULT settings, whatever torch's thread count was.

torch picks its intra-op thread count from the machine (all cores) or ``OMP_NUM_THREADS``
(torchrun sets 1), and the count groups float sums, so it changes the model. Every process of
a config run applies ``simulation.threads`` (default 1) instead. conftest fixes torch's count
to that default for speed; these tests first set another count in this process (as a fresh
process on a multi-core machine has) and give child processes another one by environment,
then compare a plain run with the pool, torchrun and a launched deployment, all with the
config's defaults:

- README "Simulation engines": ``"pool"`` ... bit-identical to one process
  (:func:`test_the_pool_equals_a_plain_run_at_default_settings`);
- README "Simulation across processes": torchrun ... bit-identical to one process
  (:func:`test_torchrun_equals_a_plain_run_at_default_settings`);
- README "Across processes and machines": a sync run gives bit-identical parameters to the
  simulation; "a launched run gives the simulation's model bit for bit"
  (:func:`test_a_launched_run_equals_a_plain_run_at_default_settings`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fedloom import Experiment
from fedloom.cli import main
from fedloom.config import SimulationConfig
from fedloom.wire import decode

DEFAULT_THREADS = SimulationConfig().threads
OTHER = DEFAULT_THREADS + 1  # what a process would otherwise have: anything but the default
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FEDLOOM_PORT")


@pytest.fixture
def machine_threads() -> Iterator[None]:
    """This process at another thread count than the config's default, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(OTHER)
    yield
    torch.set_num_threads(before)


def config(out: Path, name: str, clients: int = 4) -> dict[str, Any]:
    """Nothing about threads or engines: the defaults."""
    return {
        "name": name,
        "seed": 2,
        "rounds": 2,
        "data": {"dataset": "mnist5k", "num_clients": clients, "partition": "dirichlet"},
        "model": {"name": "mlp"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"clients_per_round": 2},
        "output": {
            "dir": out.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
    }


def write(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def saved(cfg: dict[str, Any], spec: Any) -> torch.Tensor:
    data = (Path(cfg["output"]["dir"]) / cfg["name"] / "model.safetensors").read_bytes()
    return decode(data, spec)[0]


def plain(cfg: dict[str, Any], threads: int = OTHER) -> tuple[torch.Tensor, Any]:
    """``fedloom run`` in this process, started at ``threads``."""
    torch.set_num_threads(threads)
    exp = Experiment.from_config(cfg)
    return exp.run().params, exp.federation.spec


def child_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def test_a_run_applies_and_records_its_thread_count(tmp_path: Path, machine_threads: None) -> None:
    cfg = config(tmp_path, "recorded")
    cfg["rounds"] = 1
    plain(cfg)
    assert torch.get_num_threads() == DEFAULT_THREADS
    recorded = json.loads((tmp_path / "recorded" / "config.json").read_text())
    assert recorded["simulation"]["threads"] == DEFAULT_THREADS
    cfg2 = {**config(tmp_path, "three"), "rounds": 1, "simulation": {"threads": 3}}
    plain(cfg2)
    assert torch.get_num_threads() == 3


def test_the_pool_equals_a_plain_run_at_default_settings(
    tmp_path: Path, machine_threads: None
) -> None:
    one, spec = plain(config(tmp_path, "plain"))
    pool = config(tmp_path, "pool")
    torch.set_num_threads(OTHER)
    assert main(["run", str(write(pool, tmp_path / "pool.json")), "--processes", "2"]) == 0
    assert torch.equal(saved(pool, spec), one)


def test_torchrun_equals_a_plain_run_at_default_settings(
    tmp_path: Path, machine_threads: None
) -> None:
    dist = config(tmp_path, "dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    done = subprocess.run(
        [*cmd, "2", "-m", "fedloom", "run", str(write(dist, tmp_path / "dist.json"))],
        env=child_env(None),  # torchrun's own default: 1 thread per rank
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    one, spec = plain(config(tmp_path, "plain"))
    assert torch.equal(saved(dist, spec), one)


def test_a_launched_run_equals_a_plain_run_at_default_settings(
    tmp_path: Path, machine_threads: None
) -> None:
    net = config(tmp_path, "net", clients=2)
    path = write(net, tmp_path / "net.json")
    done = subprocess.run(
        [sys.executable, "-m", "fedloom", "launch", "--nproc", "3", str(path)],
        env=child_env(OTHER),  # the aggregator's and clients' environment says another count
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    one, spec = plain(config(tmp_path, "plain", clients=2), threads=DEFAULT_THREADS)
    assert torch.equal(saved(net, spec), one)
