"""The seed systems' own inputs run end to end: asmallbit's ``cifar-resnet18.json`` on generated
CIFAR-10 binary files, and AlphaMed's FedAvg tutorial task through the adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import fedloom
from fedloom.adapters.alphamed import AlphaMedTask
from fedloom.cli import main
from fedloom.data.cifar import TEST_FILE, TRAIN_FILES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
QUIET = ["output.progress=false", "output.tensorboard=false", "output.figures=false"]


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root (where ``examples`` is importable), restoring sys.path."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_cifar(folder: Path, per_file: int) -> None:
    """CIFAR-10 binary batch files whose label is readable from the image (class k: brightness
    25k), so a few rounds can learn them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in (*TRAIN_FILES, TEST_FILE):
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        noise = rng.integers(0, 20, (per_file, 3072))
        pixels = (labels[:, None].astype(np.int64) * 25 + noise).clip(0, 255).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())


def test_asmallbit_cifar_resnet18_json_runs_in_a_run_dir_named_after_it(tmp_path, capsys):
    flat = json.loads((EXAMPLES / "cifar-resnet18.json").read_text())
    assert (flat["model_name"], flat["type"]) == ("resnet18", "cifar")
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin", per_file=16)
    out = tmp_path / "runs"
    sets = [
        f"data.root='{(tmp_path / 'cifar').as_posix()}'",
        f"output.dir='{out.as_posix()}'",
        "rounds=2",
        "data.num_clients=4",
        "data.alpha=1.0",
        "strategy.clients_per_round=2",
        "train.local_epochs=1",
        "model.options.width=4",
        *QUIET,
    ]
    args = [a for s in sets for a in ("--set", s)]
    code = main(["run", str(EXAMPLES / "cifar-resnet18.json"), *args])
    _stdout, err = capsys.readouterr()
    assert code == 0, err
    run = out / "cifar-resnet18"  # the file's name, not runs/fedloom
    assert sorted(p.name for p in out.iterdir()) == ["cifar-resnet18"]
    config = json.loads((run / "config.json").read_text())
    assert (config["name"], config["model"]["name"], config["data"]["dataset"]) == (
        "cifar-resnet18",
        "resnet18",
        "cifar",
    )
    assert config["strategy"]["name"] == "fedprox" and config["strategy"]["options"] == {"mu": 0.1}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["clients"] == 2 for r in records)
    assert (run / "model.safetensors").is_file()


def test_a_config_file_with_a_name_keeps_it_and_a_dict_keeps_the_default(tmp_path) -> None:
    (tmp_path / "mine.toml").write_text('name = "chosen"\nrounds = 1\n')
    (tmp_path / "other.toml").write_text("rounds = 1\n")
    assert fedloom.load_config(tmp_path / "mine.toml").name == "chosen"
    assert fedloom.load_config(tmp_path / "other.toml").name == "other"
    assert fedloom.load_config(str(tmp_path / "other.toml"), ["name=x"]).name == "x"
    assert fedloom.load_config({"rounds": 1}).name == "fedloom"


def alphamed_run(out: Path, engine: str = "sequential") -> Path:
    cfg = fedloom.load_config(
        "examples/alphamed_task.toml",
        [
            "rounds=2",
            "task.options.samples=200",
            "task.options.batch_size=32",
            f"output.dir='{out.as_posix()}'",
            f"simulation.engine='{engine}'",
            *QUIET,
        ],
    )
    fedloom.run(cfg)
    return out / "alphamed_task"


def test_alphamed_tutorial_task_runs_through_the_adapter(tmp_path, at_root) -> None:
    run = alphamed_run(tmp_path / "a")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all(r["clients"] == 2 for r in records)
    # test() reported through tb_writer.add_scalar: its tags' last parts are the metrics
    assert {"accuracy", "average_loss", "correct_rate", "run_time"} <= set(records[-1])
    assert records[-1]["correct_rate"] == pytest.approx(100 * records[-1]["accuracy"])
    assert records[-1]["train_loss"] > 0  # train_an_epoch's returned mean loss
    assert records[-1]["samples"] == 200  # the two data holders' loaders, 100 each
    report = json.loads((run / "report.json").read_text())
    assert report["task"]["task"] == "SimpleTaskScheduler"
    # the recorded accuracy is the saved global model's own
    from examples.alphamed_task import make_task

    task = make_task(samples=200, batch_size=32)
    model = task.build_model()
    model.load_state_dict(safetensors.torch.load_file(run / "model.safetensors"), strict=False)
    assert task.evaluate(model)["accuracy"] == records[-1]["accuracy"]
    # the tutorial's dropout and shuffling draw from torch's global generator, which fedloom
    # seeds per client and round: a worker pool gives the same model bit for bit
    pool = alphamed_run(tmp_path / "p", engine="pool")
    a, p = (f.read_bytes() for f in (run / "model.safetensors", pool / "model.safetensors"))
    assert a == p


def test_the_adapter_gives_each_hook_the_nodes_view(at_root) -> None:
    from examples.alphamed_task import make_task

    task = make_task(clients=3, samples=30, batch_size=4, seed=1)
    assert isinstance(task, AlphaMedTask) and task.num_clients == 3
    assert [task.num_samples(c) for c in range(3)] == [10, 10, 10]
    s = task.scheduler
    seen = []
    s.build_train_dataloader = lambda: seen.append(s.client_id) or [(None, None)]  # type: ignore
    task._loaders.clear()
    task._loader(2), task._loader(2), task._loader(0)
    assert seen == [2, 0]  # built once per data holder, with client_id set
    model = task.build_model()
    assert task.build_model() is not model  # the loop and the engine each flatten their own
    other = type(model)()
    opt = task.build_optimizer(other)
    assert s.model is other and opt.param_groups[0]["params"][0] is next(other.parameters())
    metrics = task.evaluate(other)
    assert s.client_id is None and set(metrics) == {
        "run_time", "average_loss", "accuracy", "correct_rate"
    }  # fmt: skip
    assert isinstance(metrics["accuracy"], float) and torch.is_grad_enabled()
