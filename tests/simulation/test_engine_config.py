"""``[simulation] engine`` and the CLI's ``--engine`` / ``--processes``: the same run as the
sequential engine (bit for bit with the worker pool, to float tolerance vectorised), and clear
errors for combinations that cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_overrides
from safetensors.torch import load_file

import fedloom
from fedloom import Experiment
from fedloom.cli import main
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.experiment import _check_engine
from fedloom.simulation import ProcessPoolClients, VectorizedClients

QUICK = {"output.figures": False, "output.tensorboard": False, "train.local_epochs": 1}


def final_params(out: Path, name: str, **extra: Any) -> tuple[Experiment, torch.Tensor]:
    exp = Experiment.from_config(None, run_overrides(out, name, **QUICK, **extra))
    result = exp.run()
    return exp, result.params


def saved_model(run_dir: Path) -> torch.Tensor:
    tensors = load_file(str(run_dir / "model.safetensors"))
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def test_the_pool_engine_from_the_cli_equals_the_sequential_run(tmp_path: Path) -> None:
    seq, params = final_params(tmp_path, "seq")
    saved = saved_model(seq.run_dir)
    argv = ["demo", "--processes", "2"]
    for item in run_overrides(tmp_path, "pool", **QUICK):
        argv += ["--set", item]
    assert main(argv) == 0
    assert torch.equal(saved_model(tmp_path / "pool"), saved)
    assert torch.equal(saved, params)


def test_the_pool_engine_is_closed_after_the_run(tmp_path: Path) -> None:
    exp, _ = final_params(tmp_path, "pool", **{"simulation.engine": "pool"})
    backend = exp.federation.backend
    assert isinstance(backend, ProcessPoolClients) and backend.workers == 2
    assert backend._closed and not any(p.is_alive() for p in backend._procs)


def test_the_vectorized_engine_trains_the_mlp_fused(tmp_path: Path) -> None:
    _, seq = final_params(tmp_path, "seq", **{"model.name": "mlp"})
    exp, vec = final_params(
        tmp_path, "vec", **{"model.name": "mlp", "simulation.engine": "vectorized"}
    )
    backend = exp.federation.backend
    assert isinstance(backend, VectorizedClients) and backend.path == "fused"
    assert torch.allclose(seq, vec, atol=1e-5)


def test_engine_flags_on_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--engine", "vectorized", "--processes", "2"]
    assert main(argv + ["--set", f"output.dir='{tmp_path.as_posix()}'"]) == 2
    assert "--processes runs the 'pool' engine" in capsys.readouterr().err
    assert main(["demo", "--processes", "0"]) == 2
    assert "--processes must be >= 1" in capsys.readouterr().err


def test_engines_that_the_config_cannot_run_are_refused(tmp_path: Path) -> None:
    topology = {
        "nodes": [{"name": "root"}, {"name": "a", "clients": "0-9"}],
        "edges": [["a", "root"]],
    }
    cfg = load_config({"simulation": {"engine": "pool"}, "topology": topology})
    with pytest.raises(ConfigError, match="a topology runs 'sequential'"):
        _check_engine(cfg, distributed=False)
    cfg = load_config({"simulation": {"engine": "vectorized"}, "train": {"state_memory_mb": 64}})
    with pytest.raises(ConfigError, match="state_memory_mb is for 'sequential'"):
        _check_engine(cfg, distributed=False)
    cfg = load_config({"simulation": {"engine": "pool"}})
    with pytest.raises(ConfigError, match="under torchrun"):
        _check_engine(cfg, distributed=True)
    with pytest.raises(ConfigError, match="simulation.engine"):
        fedloom.run(None, run_overrides(tmp_path, "x", **{"simulation.engine": "gpu"}))
