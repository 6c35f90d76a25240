"""Every example config means what its file says, and the quick ones learn what they claim:
a short run beats the best predictor that ignores the inputs, with the partition, strategy
and model the example names."""

from __future__ import annotations

import ast
import json
import math
import runpy
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fedloom
from fedloom import Experiment, FedAvg

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SHARED = ROOT.parent / "shared" / "datasets"
TOMLS = sorted(EXAMPLES.glob("*.toml"))


def leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()):
    """(path, value) for every key a TOML file sets; an ``options`` table is one value."""
    for k, v in d.items():
        if isinstance(v, dict) and v and prefix[-1:] != ("options",):
            yield from leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


@pytest.mark.parametrize("path", TOMLS, ids=lambda p: p.name)
def test_every_key_an_example_sets_is_in_the_resolved_config(path: Path) -> None:
    raw = tomllib.loads(path.read_text())
    resolved = fedloom.load_config(path).model_dump()
    for keys, value in leaves(raw):
        got: Any = resolved
        for k in keys:
            got = got[k]
        assert got == value, ".".join(keys)


def test_asmallbit_conf_translates_key_by_key() -> None:
    """examples/asmallbit_conf.json by hand: lambda 0 keeps FedAvg (not FedProx), k = 1 is no
    clustering, alpha implies a Dirichlet split, and push disabled leaves Telegram off."""
    flat = json.loads((EXAMPLES / "asmallbit_conf.json").read_text())
    assert flat["lambda"] == 0 and flat["k"] == 1 and flat["is_push_enable"] is False
    cfg = fedloom.load_config(EXAMPLES / "asmallbit_conf.json")
    assert (cfg.model.name, cfg.data.dataset, cfg.rounds) == ("mlp", "mnist5k", 20)
    assert (cfg.data.partition, cfg.data.alpha) == ("dirichlet", 0.5)
    assert (cfg.train.local_epochs, cfg.train.batch_size, cfg.train.lr) == (2, 10, 0.05)
    assert (cfg.strategy.name, cfg.strategy.clusters, cfg.strategy.options) == ("fedavg", 1, {})
    assert cfg.notify.telegram_token is None and cfg.notify.telegram_chat_id is None


# -- the quick examples learn ---------------------------------------------------------------
def quick_run(name: str, tmp_path: Path, rounds: int, root: Path | None = None):
    """The example as written, for ``rounds`` rounds: (experiment, metrics before, result)."""
    overrides = [
        f"rounds={rounds}",
        f"output.dir='{tmp_path}'",
        "output.progress=false",
        "output.tensorboard=false",
        "output.figures=false",
    ]
    if root is not None:
        if not root.exists():
            pytest.skip(f"{root} not present")
        overrides.append(f"data.root='{root}'")
    exp = Experiment.from_config(EXAMPLES / name, overrides)
    before = exp.task.evaluate(exp.federation.model)
    return exp, before, exp.run()


def assert_learned(exp: Experiment, before: dict, result: fedloom.RunResult) -> None:
    """Better than any predictor that ignores its input. The best constant prediction scores
    the test set's majority-class share p0 and a cross-entropy of the test labels' entropy H;
    the model must beat H, and p0 by 5 standard errors of a p0-accurate guesser."""
    y = exp.dataset.test_y
    freq = torch.bincount(y, minlength=exp.dataset.num_classes).double() / len(y)
    nz = freq[freq > 0]
    entropy, p0 = float(-(nz * nz.log()).sum()), float(freq.max())
    after = result.final_metrics
    assert after["test_loss"] < min(before["test_loss"], entropy), (before, after, entropy)
    assert after["accuracy"] > p0 + 5 * math.sqrt(p0 * (1 - p0) / len(y)), (after, p0)


def assert_split(exp: Experiment, clients: int) -> list[np.ndarray]:
    """The parts are ``clients`` disjoint sets covering the training set."""
    parts = [np.asarray(p) for p in exp.parts]
    assert len(parts) == exp.task.num_clients == clients
    every = np.concatenate(parts)
    assert np.array_equal(np.sort(every), np.arange(len(exp.dataset.train_y)))
    return parts


def label_skew(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's label mix and the whole set's."""
    whole = np.bincount(y, minlength=num_classes) / len(y)
    mixes = [np.bincount(y[p], minlength=num_classes) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(m - whole).sum() for m in mixes]))


def assert_skewed(exp: Experiment, parts: list[np.ndarray]) -> None:
    """Far more label skew than an IID split of the same sizes (made here with numpy)."""
    y, c = exp.dataset.train_y.numpy(), exp.dataset.num_classes
    perm = np.random.default_rng(0).permutation(len(y))
    iid = np.split(perm, np.cumsum([len(p) for p in parts])[:-1])
    assert label_skew(y, parts, c) > 2 * label_skew(y, iid, c)


def layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def assert_fedavg_rounds(exp: Experiment, result: fedloom.RunResult, per_round: int) -> None:
    assert type(exp.federation.strategy) is FedAvg
    assert [r["clients"] for r in result.history] == [per_round] * result.rounds


def test_mnist_dirichlet_example_learns_on_a_label_skewed_split(tmp_path: Path) -> None:
    exp, before, result = quick_run("mnist_dirichlet.toml", tmp_path, rounds=2)
    assert_skewed(exp, assert_split(exp, 100))
    assert_fedavg_rounds(exp, result, 10)
    assert layers(exp.federation.model, nn.Conv2d)  # small_cnn
    assert_learned(exp, before, result)


def test_asmallbit_example_learns_with_the_translated_settings(tmp_path: Path) -> None:
    exp, before, result = quick_run("asmallbit_conf.json", tmp_path, rounds=3)
    assert_skewed(exp, assert_split(exp, 100))
    assert_fedavg_rounds(exp, result, 10)
    model = exp.federation.model
    assert not layers(model, nn.Conv2d) and len(layers(model, nn.Linear)) >= 2  # an MLP
    assert (exp.task.lr, exp.task.batch_size, exp.task.local_epochs) == (0.05, 10, 2)
    assert_learned(exp, before, result)


def test_synthetic_logreg_example_learns_on_its_own_client_distributions(tmp_path: Path) -> None:
    exp, before, result = quick_run("synthetic_logreg.toml", tmp_path, rounds=3)
    parts = assert_split(exp, 30)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 5 * min(sizes)  # Synthetic(1, 1)'s power-law sizes, not an even split
    assert_skewed(exp, parts)
    assert_fedavg_rounds(exp, result, 10)
    (linear,) = layers(exp.federation.model, nn.Linear)  # logistic regression: one layer
    assert linear.out_features == 10
    assert_learned(exp, before, result)


def test_femnist_example_learns_on_the_writers_split(tmp_path: Path) -> None:
    """Eight rounds: FEMNIST's 62 classes take about seven to beat the label prior."""
    root = SHARED / "leaf_femnist"
    exp, before, result = quick_run("femnist_natural.toml", tmp_path, rounds=8, root=root)
    # one client per writer, holding that writer's samples, read here from LEAF's json
    counts: list[int] = []
    for shard in sorted((root / "train").glob("*.json")):
        counts += json.loads(shard.read_text())["num_samples"]
    parts = assert_split(exp, len(counts))
    assert [len(p) for p in parts] == counts
    assert_fedavg_rounds(exp, result, 5)
    assert layers(exp.federation.model, nn.Linear)[-1].out_features == 62
    assert_learned(exp, before, result)


def test_custom_task_example_runs_as_a_script_and_fits_the_function(capsys) -> None:
    runpy.run_path(str(EXAMPLES / "custom_task.py"), run_name="__main__")
    out = capsys.readouterr().out
    metrics = ast.literal_eval(out.strip().splitlines()[-1])
    assert set(metrics) == {"mse", "mae", "r2"}
    assert metrics["r2"] > 0.8, metrics  # explains most of the variance after 30 rounds
