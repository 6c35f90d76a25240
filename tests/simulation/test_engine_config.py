"""``[simulation] engine`` and the CLI's ``--engine`` / ``--processes``: the same run as the
sequential engine (bit for bit with the worker pool, to float tolerance vectorised), and clear
errors for combinations that cannot run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_overrides
from safetensors.torch import load_file

import fedloom
from fedloom import Experiment, TensorDataset
from fedloom.cli import main
from fedloom.errors import ConfigError
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


class Workers(fedloom.Callback):
    """The pool's worker processes, as seen at the end of each round."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_round_end(self, fed, record) -> None:
        self.seen += [p for p in fed.backend.processes if p not in self.seen]


def test_the_pool_engine_is_closed_after_the_run(tmp_path: Path) -> None:
    exp = Experiment.from_config(
        None, run_overrides(tmp_path, "pool", **QUICK, **{"simulation.engine": "pool"})
    )
    workers = Workers()
    exp.federation.callbacks.append(workers)
    exp.run()
    backend = exp.federation.backend
    assert isinstance(backend, ProcessPoolClients) and backend.workers == 2
    assert len(workers.seen) == 2 and all(p.pid for p in workers.seen)  # they did run
    assert not any(p.is_alive() for p in workers.seen) and backend.processes == []
    with pytest.raises(RuntimeError, match="closed"):  # and none are started again
        backend.distribute(3, fedloom.RoundPlan([0]), exp.federation.params)


@pytest.fixture
def float64_mlp(register_temp_model) -> Iterator[dict[str, Any]]:
    """Overrides that run the MNIST MLP in float64: the model and the data cast to double."""
    from fedloom.registry import DATASETS

    def mnist5k_f64(**kw: Any) -> TensorDataset:
        d = fedloom.load_mnist5k(**kw)
        return TensorDataset(
            "mnist5k_f64", d.train_x.double(), d.train_y, d.test_x.double(), d.test_y, 10
        )

    register_temp_model("mlp_f64", lambda shape, n: fedloom.build_model("mlp", shape, n).double())
    DATASETS.register("mnist5k_f64", mnist5k_f64)
    yield {"model.name": "mlp_f64", "data.dataset": "mnist5k_f64"}
    DATASETS.unregister("mnist5k_f64")


def test_the_vectorized_engine_trains_the_mlp_fused(
    tmp_path: Path, float64_mlp: dict[str, Any]
) -> None:
    vectorized = {"simulation.engine": "vectorized"}
    runs: dict[str, torch.Tensor] = {}
    for name, extra in {
        "seq32": {"model.name": "mlp"},
        "vec32": {"model.name": "mlp", **vectorized},
        "seq64": float64_mlp,
        "vec64": {**float64_mlp, **vectorized},
    }.items():
        exp, runs[name] = final_params(tmp_path, name, **extra)
        if name.startswith("vec"):
            backend = exp.federation.backend
            assert isinstance(backend, VectorizedClients) and backend.path == "fused"
    # float64: the same algorithm, so only rounding differs: eps64 (1.1e-16) x the ~800 terms
    # of a 784-wide dot product x 40 steps (2 rounds of 400 samples / B=20) on values < 3:
    # ~1e-11 < 1e-10 (seen: 6e-17); any error in the algorithm shows as > 1e-4.
    assert runs["vec64"].dtype == torch.float64
    assert (runs["vec64"] - runs["seq64"]).abs().max() < 1e-10
    # float32: rounding alone keeps the engines within ~1e-7 of the float64 run, but a ReLU input
    # within rounding of zero can go either way (here: seq32 3.6e-8 from float64, vec32 2.4e-5).
    # One flipped unit changes one sample's term of one step by lr/B * max|x| * |delta|, where
    # |delta| <= 2 * max|W_out| = 2 / sqrt(200) ~ 0.14 (softmax - onehot sums to <= 2 in |.|;
    # init bound of the 200 -> 10 layer): 0.05 / 20 * 2.83 * 0.14 ~ 1e-3.
    assert (runs["vec32"] - runs["seq32"]).abs().max() <= 1e-3


def test_engine_flags_on_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--engine", "vectorized", "--processes", "2"]
    assert main([*argv, "--set", f"output.dir='{tmp_path.as_posix()}'"]) == 2
    assert "--processes runs the 'pool' engine" in capsys.readouterr().err
    assert main(["demo", "--processes", "0"]) == 2
    assert "--processes must be >= 1" in capsys.readouterr().err


def test_engines_that_the_config_cannot_run_are_refused(tmp_path: Path, monkeypatch) -> None:
    topology = {
        "nodes": [{"name": "root"}, {"name": "a", "clients": "0-9"}],
        "edges": [["a", "root"]],
    }
    out = {"dir": tmp_path.as_posix(), "progress": False}
    pool = {"simulation": {"engine": "pool"}, "output": out, "model": {"name": "logreg"}}
    with pytest.raises(ConfigError, match="a topology runs 'sequential'"):
        Experiment.from_config({**pool, "topology": topology})
    vec = {**pool, "simulation": {"engine": "vectorized"}, "train": {"state_memory_mb": 64}}
    with pytest.raises(ConfigError, match="state_memory_mb is for 'sequential'"):
        Experiment.from_config(vec)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, on rank 1
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="under torchrun"):
        Experiment.from_config(pool)
    with pytest.raises(ConfigError, match=r"simulation\.engine"):
        fedloom.run(None, run_overrides(tmp_path, "x", **{"simulation.engine": "gpu"}))
