"""Checkpoints and run directories are safe: checksummed checkpoints (every corruption is one
CheckpointError), no silent rerun over an earlier run, --resume refuses a changed experiment,
and run names stay inside output.dir."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import fedloom
from fedloom import CheckpointError, Experiment, load_checkpoint, save_checkpoint
from fedloom.cli import main
from fedloom.federation.checkpoint import MAGIC
from fedloom.federation.rundir import changed_keys

NAME = "ck"


def tiny_config(out: Path, **changes: Any) -> dict[str, Any]:
    """mnist5k, logreg, 4 clients, 2 rounds: a real run in a couple of seconds."""
    cfg: dict[str, Any] = {
        "name": NAME,
        "seed": 0,
        "rounds": 2,
        "data": {"dataset": "mnist5k", "num_clients": 4, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": 3},
        "output": {"dir": out.as_posix(), "progress": False, "tensorboard": False},
    }
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        section = cfg
        for key in path:
            section = section.setdefault(key, {})
        section[last] = value
    cfg["output"]["figures"] = False
    return cfg


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedloom: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, run dir) of a finished 2-round run: checkpoint, model and report."""
    root = tmp_path_factory.mktemp("finished")
    config = write(root / "ck.json", tiny_config(root / "runs"))
    assert main(["run", str(config)]) == 0
    return config, root / "runs" / NAME


@pytest.fixture(scope="module")
def good(finished) -> bytes:
    return (finished[1] / "checkpoint.pt").read_bytes()


# -- the corruption matrix ------------------------------------------------------------------
def flip(offset: int) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        i = offset % len(data)
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

    return corrupt


def flip_in_tensor_data(data: bytes) -> bytes:
    """One bit of a weight: the flip that silently changed weights before checksums."""
    params = torch.load(io.BytesIO(data[len(MAGIC) + 34 :]), weights_only=True)["params"]
    start = data.find(params.numpy().tobytes()[:64])
    assert start > len(MAGIC) + 34
    return flip(start + 101)(data)


def framed(obj: Any, version: int = 1) -> bytes:
    """A header with a correct digest around ``torch.save(obj)``: well-formed, maybe wrong."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    return MAGIC + version.to_bytes(2, "little") + hashlib.sha256(payload).digest() + payload


def old_format(data: bytes) -> bytes:
    """The same state as a bare torch.save file, as fedloom wrote before checksums."""
    state = torch.load(io.BytesIO(data[len(MAGIC) + 34 :]), weights_only=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def without(key: str) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        state = torch.load(io.BytesIO(data[len(MAGIC) + 34 :]), weights_only=True)
        del state[key]
        return framed(state)

    return corrupt


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "truncated in the magic": lambda d: d[:5],
    "truncated after the header": lambda d: d[: len(MAGIC) + 34],
    "truncated at half": lambda d: d[: len(d) // 2],
    "last byte cut": lambda d: d[:-1],
    "flip in the magic": flip(0),
    "flip in the version": flip(len(MAGIC)),
    "flip in the digest": flip(len(MAGIC) + 10),
    "flip at the payload's start": flip(len(MAGIC) + 34),
    "flip in the pickle": flip(len(MAGIC) + 34 + 120),
    "flip in tensor data": flip_in_tensor_data,
    "flip in the middle": lambda d: flip(len(d) // 2)(d),
    "flip of the last byte": flip(-1),
    "zeros": lambda d: bytes(len(d)),
    "random bytes": lambda d: os.urandom(len(d)),
    "a little garbage": lambda d: b"not a checkpoint at all\n",
    "bytes appended": lambda d: d + b"\x00" * 16,
    "garbage appended": lambda d: d + os.urandom(1000),
    "old format (bare torch.save)": old_format,
    "unknown version, valid digest": lambda d: framed({"round": 1}, version=2),
    "a list, valid digest": lambda d: framed([1, 2, 3]),
    "wrong types, valid digest": lambda d: framed({"round": "two", "params": [0.0]}),
    "params missing, valid digest": without("params"),
}


def test_a_good_checkpoint_has_the_header_and_its_config(finished, good) -> None:
    assert good.startswith(MAGIC) and len(CORRUPTIONS) >= 16
    state = load_checkpoint(finished[1] / "checkpoint.pt")
    assert state["round"] == 2 and json.loads(state["config"])["train"]["lr"] == 0.05


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_every_corruption_is_one_checkpoint_error(case, finished, good, tmp_path, capsys) -> None:
    run_dir = tmp_path / "runs" / NAME
    run_dir.mkdir(parents=True)
    path = run_dir / "checkpoint.pt"
    path.write_bytes(CORRUPTIONS[case](good))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    config = write(tmp_path / "ck.json", tiny_config(tmp_path / "runs"))
    assert main(["run", str(config), "--resume"]) == 2
    assert str(path) in one_line_error(capsys)


def test_unreadable_checkpoint_and_the_subprocess_exit(finished, tmp_path) -> None:
    run_dir = tmp_path / "runs" / NAME
    (run_dir / "checkpoint.pt").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(run_dir / "checkpoint.pt")
    shutil.rmtree(run_dir / "checkpoint.pt")
    (run_dir / "checkpoint.pt").write_bytes(b"\x00" * 100)
    config = write(tmp_path / "ck.json", tiny_config(tmp_path / "runs"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedloom", "run", str(config), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedloom: error: checkpoint "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_save_round_trips_and_stays_atomic(tmp_path) -> None:
    state = {"round": 1, "params": torch.arange(5.0)}
    path = save_checkpoint(tmp_path / "c.pt", state)
    assert path.read_bytes().startswith(MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    loaded = torch.load(io.BytesIO(path.read_bytes()[len(MAGIC) + 34 :]), weights_only=True)
    assert torch.equal(loaded["params"], state["params"])


# -- reruns: refused unless --resume or --overwrite --------------------------------------------
def test_rerun_is_refused_and_leaves_the_earlier_run(finished, capsys) -> None:
    config, run_dir = finished
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {"checkpoint.pt", "model.safetensors", "report.json"} <= set(before)
    assert main(["run", str(config)]) == 2
    line = one_line_error(capsys)
    assert str(run_dir) in line and "--resume" in line and "--overwrite" in line
    with pytest.raises(fedloom.RunDirError):
        fedloom.run(config)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_overwrite_replaces_the_earlier_run(tmp_path, capsys) -> None:
    config = write(tmp_path / "ck.json", tiny_config(tmp_path / "runs"))
    assert main(["run", str(config), "--set", "rounds=1"]) == 0
    run_dir = tmp_path / "runs" / NAME
    assert main(["run", str(config), "--overwrite"]) == 0
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").open()]
    assert rounds == [1, 2]
    assert fedloom.run(config, overwrite=True).rounds == 2
    capsys.readouterr()
    assert main(["run", str(config), "--overwrite", "--resume"]) == 2
    assert "give one" in one_line_error(capsys)


def test_demo_server_and_start_take_overwrite(tmp_path, capsys, monkeypatch) -> None:
    quick = ["--set", f"output.dir='{(tmp_path / 'runs').as_posix()}'", "--set", "rounds=1"]
    quick += ["--set", "model.name='logreg'", "--set", "data.num_clients=4"]
    quick += ["--set", "strategy.clients_per_round=2", "--set", "train.local_epochs=1"]
    quick += ["--no-progress", "--set", "output.figures=false", "--set", "output.tensorboard=false"]
    assert main(["demo", *quick]) == 0
    assert main(["demo", *quick]) == 2
    assert "runs/demo already holds a run" in one_line_error(capsys)
    assert main(["demo", *quick, "--overwrite"]) == 0

    config = write(tmp_path / "ck.json", tiny_config(tmp_path / "runs", name="demo"))
    capsys.readouterr()
    for argv in (["server", str(config)], ["start", str(config), "--role", "server"]):
        assert main(argv) == 2  # refused before a port is opened
        assert "already holds a run" in one_line_error(capsys)
    from fedloom.deploy import roles

    seen: list[bool] = []

    def fake_server(*args: Any, overwrite: bool = False, **kwargs: Any) -> Any:
        seen.append(overwrite)
        return SimpleNamespace(rounds=0, stop_reason="test", final_metrics={})

    monkeypatch.setattr(roles, "run_server", fake_server)
    assert main(["server", str(config), "--overwrite"]) == 0
    assert main(["start", str(config), "--role", "server", "--overwrite"]) == 0
    assert seen == [True, True]


# -- --resume: a changed experiment is refused, naming the keys ------------------------------
@pytest.mark.parametrize(
    "changes, keys",
    [
        ({"train.lr": 0.1}, ["train.lr"]),
        ({"data.alpha": 0.1, "train.lr": 0.1}, ["data.alpha", "train.lr"]),
        ({"model.name": "mlp"}, ["model.name"]),
        ({"strategy.options": {"weighted": False}, "seed": 1}, ["seed", "strategy.options"]),
    ],
)
def test_resume_with_a_changed_experiment_is_refused(finished, changes, keys, capsys) -> None:
    config, run_dir = finished
    before = (run_dir / "checkpoint.pt").read_bytes()
    changed = write(config.parent / "changed.json", tiny_config(config.parent / "runs", **changes))
    assert main(["run", str(changed), "--resume"]) == 2
    line = one_line_error(capsys)
    assert "cannot resume" in line and all(k in line for k in keys), line
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_a_checkpoint_without_its_config_still_names_a_changed_model(finished, tmp_path) -> None:
    state = load_checkpoint(finished[1] / "checkpoint.pt")
    del state["config"]  # e.g. saved by hand from Federation.state_dict()
    save_checkpoint(tmp_path / "runs" / NAME / "checkpoint.pt", state)
    cfg = tiny_config(tmp_path / "runs", **{"model.name": "mlp"})
    with pytest.raises(CheckpointError, match="parameters"):
        Experiment.from_config(cfg, resume=True)


def test_resume_accepts_more_rounds_and_equals_an_uninterrupted_run(finished, tmp_path) -> None:
    _config, run_dir = finished
    work = tmp_path / "runs"
    shutil.copytree(run_dir, work / NAME)
    more = tiny_config(work, rounds=3, **{"output.tensorboard": True, "eval.every": 1})
    with pytest.raises(CheckpointError, match=r"changed train\.local_epochs \(1 -> 2\);"):
        fedloom.run({**more, "train": {**more["train"], "local_epochs": 2}}, resume=True)
    resumed = fedloom.run(more, resume=True)
    straight = fedloom.run(tiny_config(tmp_path / "straight", rounds=3))
    assert resumed.rounds == 3 and torch.equal(resumed.params, straight.params)
    rounds = [json.loads(line)["round"] for line in (work / NAME / "metrics.jsonl").open()]
    assert rounds == [1, 2, 3]


def test_a_checkpoint_from_before_a_key_existed_resumes_at_its_default(finished, tmp_path) -> None:
    """A key added to the config since the checkpoint was written (``train.precision``) counts
    at its default; set to something else it is a change like any other."""
    state = load_checkpoint(finished[1] / "checkpoint.pt")
    saved = json.loads(state["config"])
    del saved["train"]["precision"], saved["train"]["deterministic"]
    path = tmp_path / "runs" / NAME / "checkpoint.pt"
    save_checkpoint(path, {**state, "config": json.dumps(saved)})
    more = tiny_config(tmp_path / "runs", rounds=3)
    bf16 = {**more, "train": {**more["train"], "precision": "bf16"}}
    with pytest.raises(CheckpointError, match=r"train\.precision \('fp32' -> 'bf16'\)"):
        Experiment.from_config(bf16, resume=True)
    assert fedloom.run(more, resume=True).rounds == 3


def test_changed_keys_allows_only_the_resumable_ones() -> None:
    old = fedloom.load_config({}).model_dump()
    safe = fedloom.load_config(
        {
            "rounds": 99,
            "name": "moved",
            "output": {"dir": "elsewhere", "progress": True, "figures": False},
            "runtime": {"address": "0.0.0.0:1", "round_timeout": 5.0},
            "simulation": {"engine": "pool", "workers": 4},
            "notify": {"webhook_url": "http://x"},
            "eval": {"every": 5},
        }
    ).model_dump()
    assert changed_keys(old, safe) == {}
    unsafe = fedloom.load_config(
        {"train": {"local_epochs": 1, "batch_size": 7}, "data": {"num_clients": 3}}
    ).model_dump()
    assert list(changed_keys(old, unsafe)) == [
        "data.num_clients",
        "train.batch_size",
        "train.local_epochs",
    ]


# -- run names stay inside output.dir ---------------------------------------------------------
@pytest.mark.parametrize("name", ["../../..", "..", ".", "", "  ", "a/b", "/tmp/x", "a\\b"])
def test_run_names_that_leave_output_dir_are_refused(name, tmp_path, capsys) -> None:
    out = tmp_path / "deep" / "er" / "runs"
    config = write(tmp_path / "ck.json", tiny_config(out, name=name))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "name: must be one folder name inside output.dir" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "ck.json"]  # nothing written anywhere
