"""Every example config is valid and the quick ones run end to end for one round."""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

import fedloom

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SHARED = ROOT.parent / "shared" / "datasets"
CONFIGS = sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path: Path) -> None:
    cfg = fedloom.load_config(path)
    assert cfg.rounds >= 1


ROOTS = {"femnist_natural.toml": SHARED / "leaf_femnist"}
QUICK = [
    "mnist_dirichlet.toml",
    "femnist_natural.toml",
    "synthetic_logreg.toml",
    "asmallbit_conf.json",
]


@pytest.mark.parametrize("name", QUICK)
def test_example_runs_one_round(name: str, tmp_path: Path) -> None:
    overrides = [
        "rounds=1",
        "train.local_epochs=1",
        f"output.dir='{tmp_path}'",
        "output.progress=false",
        "output.tensorboard=false",
    ]
    if name in ROOTS:
        if not ROOTS[name].exists():
            pytest.skip(f"{ROOTS[name]} not present")
        overrides.append(f"data.root='{ROOTS[name]}'")
    result = fedloom.run(EXAMPLES / name, overrides)
    assert result.rounds == 1
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0


def test_custom_task_example_runs_as_a_script_and_fits_the_function(capsys) -> None:
    runpy.run_path(str(EXAMPLES / "custom_task.py"), run_name="__main__")
    out = capsys.readouterr().out
    metrics = ast.literal_eval(out.strip().splitlines()[-1])
    assert set(metrics) == {"mse", "mae", "r2"}
    assert metrics["r2"] > 0.8, metrics  # explains most of the variance after 30 rounds
