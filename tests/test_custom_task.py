"""A Task of your own named in a config (``[task] factory``): it runs in every simulation
engine and in a topology, the report does not assume a classifier, the keys it replaces are
refused by name, and each way its import or build can fail is one ``fedloom: error:`` line.

The network runtime and torchrun runs of it are in ``tests/runtime/test_custom_task.py``.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

import fedloom
from fedloom import Experiment
from fedloom.cli import main
from fedloom.federation.rundir import changed_keys

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "examples.custom_task:make_task"


def task_config(out: Path, name: str = "custom", **changes: Any) -> dict[str, Any]:
    """The example's regression task, small: 6 clients, 4 a round, 2 rounds."""
    cfg: dict[str, Any] = {
        "name": name,
        "seed": 1,
        "rounds": 2,
        "task": {"factory": FACTORY, "options": {"clients": 6, "samples": 32}},
        "strategy": {"name": "fedavg", "clients_per_round": 4},
        "output": {
            "dir": out.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
    }
    for dotted, value in changes.items():
        d = cfg
        *path, last = dotted.split(".")
        for k in path:
            d = d.setdefault(k, {})
        d[last] = value
    return cfg


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root (where ``examples`` is importable), restoring sys.path."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))


def fedloom_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- runs ---------------------------------------------------------------------------------------
def test_fedloom_run_trains_the_example_config_and_reports_its_own_metrics(
    tmp_path, capsys, at_root
):
    out = tmp_path / "runs"
    code, stdout, err = fedloom_cli(
        capsys,
        "run",
        "examples/custom_task.toml",
        "--set", "rounds=3",
        "--set", f"output.dir='{out.as_posix()}'",
        "--set", "output.tensorboard=false",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "custom_task: 3 rounds (max_rounds); mse " in stdout
    run = out / "custom_task"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert {"mse", "mae", "r2", "train_loss"} <= set(records[-1]) and "accuracy" not in records[-1]
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"mse.png", "mae.png", "r2.png", "loss.png"} == figures  # no accuracy, no partition
    report = json.loads((run / "report.json").read_text())
    assert report["task_factory"] == FACTORY and report["task"]["task"] == "RegressionTask"
    assert set(report["final_metrics"]) == {"mse", "mae", "r2"}
    config = json.loads((run / "config.json").read_text())
    assert "data" not in config and "model" not in config  # the built-in task's, unused
    assert set(config["train"]) == {"stragglers", "state_memory_mb"}


def test_every_simulation_engine_gives_the_same_model(tmp_path, at_root):
    """pool forks workers that inherit the task; vectorized falls back to sequential (it
    vectorises only the built-in task) and says why."""
    finals = {}
    for engine in ("sequential", "pool", "vectorized"):
        cfg = task_config(tmp_path / engine, **{"simulation.engine": engine})
        exp = Experiment.from_config(cfg)
        finals[engine] = exp.run().params
        if engine == "vectorized":
            assert "not a ClassificationTask" in exp.federation.backend.fallback_reason
    assert torch.equal(finals["sequential"], finals["pool"])
    assert torch.equal(finals["sequential"], finals["vectorized"])


def test_a_custom_metric_target_stops_the_run_the_way_its_mode_says(tmp_path, at_root):
    falls = task_config(
        tmp_path / "min", rounds=10, eval={"target_metric": "mse", "target_value": 100.0,
                                           "target_mode": "min"}
    )  # fmt: skip
    assert Experiment.from_config(falls).run().stop_reason == "target"  # mse < 100 at once
    rises = task_config(
        tmp_path / "max", rounds=2, eval={"target_metric": "mse", "target_value": 100.0,
                                          "target_mode": "max"}
    )  # fmt: skip
    assert Experiment.from_config(rises).run().stop_reason == "max_rounds"


def test_a_topology_runs_the_custom_task_and_its_client_ids_are_checked_against_it(
    tmp_path, at_root
):
    nodes = [
        {"name": "root"},
        {"name": "e0", "clients": "0-2"},
        {"name": "e1", "clients": "3-5"},
    ]
    topology = {"nodes": nodes, "edges": [["e0", "root"], ["e1", "root"]]}
    cfg = task_config(tmp_path, topology=topology, **{"strategy.clients_per_round": 2})
    result = Experiment.from_config(cfg).run()
    assert result.rounds == 2 and "mse" in result.final_metrics
    nodes[2]["clients"] = "3-6"  # the task has clients 0-5
    with pytest.raises(Exception, match=r"node 'e1' has client 6, but the task's 6 clients"):
        Experiment.from_config(task_config(tmp_path / "bad", topology=topology))


def test_resume_continues_a_custom_task_run_and_refuses_changed_task_options(tmp_path, at_root):
    Experiment.from_config(task_config(tmp_path, rounds=1)).run()
    resumed = Experiment.from_config(task_config(tmp_path, rounds=2), resume=True).run()
    straight = Experiment.from_config(task_config(tmp_path / "straight", rounds=2)).run()
    assert torch.equal(resumed.params, straight.params)
    changed = task_config(tmp_path, rounds=3, **{"task.options.samples": 16})
    with pytest.raises(Exception, match=r"changed task\.options\.samples \(32 -> 16\)"):
        Experiment.from_config(changed, resume=True)


def test_a_checkpoint_from_before_task_sections_still_resumes():
    assert changed_keys({"seed": 0}, {"seed": 0, "task": None}) == {}
    assert "task.factory" in changed_keys({"seed": 0}, {"seed": 0, "task": {"factory": "m:f"}})


# -- refused combinations -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"data.num_clients": 10}, "data.num_clients: set for the built-in classification task"),
        (
            {"model.name": "mlp", "train.lr": 0.5},
            "model.name, train.lr: set for the built-in classification task, but "
            f"task.factory = '{FACTORY}' replaces it; pass what your task needs in task.options",
        ),
        ({"eval.target_metric": "mse", "eval.target_value": 0.1}, "eval.target_mode: say whether"),
        ({"task.factory": "examples/custom_task.py"}, "must be an import path 'module:callable'"),
        ({"task.factory": "examples.custom_task:"}, "must be an import path"),
        ({"strategy.clients_per_round": 7}, "strategy.clients_per_round: 7 is more than the task"),
        ({"runtime.quorum": 9}, "runtime.quorum: 9 is more than the task's 6 clients"),
        ({"attack.kind": "label_flip"}, "attack.kind = 'label_flip' flips the labels of a "
                                         "ClassificationTask; task.factory = "),
        ({"task.options.colour": "red"}, "raised while building the task: TypeError: "),
    ],
)  # fmt: skip
def test_contradictory_or_impossible_settings_are_one_error_naming_the_keys(
    tmp_path, capsys, at_root, changes, needle
):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(task_config(tmp_path, **changes)))
    code, _, err = fedloom_cli(capsys, "run", str(config))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fedloom: error: "), err
    assert needle in err


def test_options_reach_the_factory_and_stragglers_still_apply(tmp_path, at_root):
    cfg = task_config(tmp_path, **{"train.stragglers": 0.5, "task.options.clients": 5})
    exp = Experiment.from_config(cfg)
    assert exp.task.num_clients == 5 and exp.dataset is None and exp.parts is None
    history = exp.run().history
    # FedAvg drops the stragglers that drew fewer epochs: some of each cohort of 4 (seed 1)
    assert [r["clients"] + r["stragglers_dropped"] for r in history] == [4, 4]
    assert sum(r["stragglers_dropped"] for r in history) > 0


def test_fedloom_partition_needs_the_built_in_task(tmp_path, capsys, at_root):
    code, _, err = fedloom_cli(capsys, "partition", "examples/custom_task.toml")
    assert code == 2
    assert "fedloom partition shows the built-in classification task's data split" in err


# -- a task that cannot be imported or built ---------------------------------------------
MODULE = """
import fedloom
from examples.custom_task import make_task

NOT_CALLABLE = 3

def broken(**options):
    raise ValueError("clients must be positive\\nsecond line")

def not_a_task(**options):
    return {"model": None}

class Holder:
    make = staticmethod(make_task)

def strict(clients=2, seed=0):
    return make_task(clients=clients, seed=seed)
"""


@pytest.mark.parametrize(
    "attr,needle",
    [
        ("missing", "task.factory = '{f}': module '{mod}' has no attribute 'missing'"),
        ("Holder.gone", "task.factory = '{f}': '{mod}:Holder' has no attribute 'gone'"),
        ("NOT_CALLABLE", "task.factory = '{f}' is a int, not a callable that returns a Task"),
        (
            "broken",
            "task.factory = '{f}' raised while building the task: ValueError: clients must be "
            "positive",
        ),
        ("not_a_task", "task.factory = '{f}' returned builtins.dict, not a fedloom.Task"),
        ("strict", "task.options: ['samples'] not taken by {f}; it takes ['clients', 'seed']"),
        ("Holder.make", None),  # a dotted attribute path works
    ],
)
def test_a_task_that_cannot_be_built_is_one_error_naming_the_path(
    tmp_path, capsys, monkeypatch, attr, needle
):
    """The module sits in the working directory (a fresh one, off sys.path) and is found
    there as ``python -m`` would find it."""
    mod = f"usertask_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")] + [str(ROOT)])
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cfg.json"
    cfg = task_config(tmp_path / "runs", **{"task.factory": f"{mod}:{attr}"})
    config.write_text(json.dumps(cfg))
    code, _, err = fedloom_cli(capsys, "run", str(config))
    sys.modules.pop(mod, None)
    if needle is None:
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 1, err
    assert err == f"fedloom: error: {needle.format(mod=mod, f=f'{mod}:{attr}')}\n"


@pytest.mark.parametrize(
    "source,factory,needle",
    [
        (None, "nosuchmodule_xyz:make", "no module named 'nosuchmodule_xyz' (looked in the "
                                        "working directory"),
        (None, "examples.nosuch:make", "no module named 'examples.nosuch'"),
        ("import nosuchdependency_xyz\n", "{mod}:make", "importing '{mod}' failed: "
                                          "ModuleNotFoundError: No module named "
                                          "'nosuchdependency_xyz'"),
        ("def make(:\n", "{mod}:make", "importing '{mod}' failed: SyntaxError: "),
        ("raise RuntimeError('no GPU here')\n", "{mod}:make", "importing '{mod}' failed: "
                                                             "RuntimeError: no GPU here"),
    ],
)  # fmt: skip
def test_a_module_that_cannot_be_imported_is_one_error_naming_the_path(
    tmp_path, capsys, monkeypatch, source, factory, needle
):
    mod = f"usertask_{uuid.uuid4().hex[:8]}"
    if source is not None:
        (tmp_path / f"{mod}.py").write_text(source)
    monkeypatch.setattr(sys, "path", [*list(sys.path), str(ROOT)])
    monkeypatch.chdir(tmp_path)
    factory = factory.format(mod=mod)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(task_config(tmp_path / "runs", **{"task.factory": factory})))
    code, _, err = fedloom_cli(capsys, "run", str(config))
    sys.modules.pop(mod, None)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"fedloom: error: task.factory = '{factory}': {needle.format(mod=mod)}")


def test_the_cause_is_chained_for_verbose_tracebacks(tmp_path, at_root):
    from fedloom.errors import ConfigError

    cfg = task_config(tmp_path, **{"task.options.clients": 0})
    with pytest.raises(ConfigError, match="raised while building the task: ValueError") as err:
        Experiment.from_config(cfg)
    assert isinstance(err.value.__cause__, ValueError)


def test_a_task_registered_by_name_is_named_in_the_config(tmp_path, at_root):
    """``register_task`` beside a factory makes it ``factory = "name"``: one file to add a
    kind of task; the name goes through the same options, seed and checks as an import path."""
    from examples.custom_task import make_task
    from fedloom.registry import TASKS

    TASKS.register("regression-example", make_task)
    try:
        cfg = task_config(tmp_path, "by-name", **{"task.factory": "regression-example"})
        by_name = Experiment.from_config(cfg)
        by_path = Experiment.from_config(task_config(tmp_path, "by-path"))
        assert type(by_name.task).__name__ == "RegressionTask"
        assert by_name.task.num_clients == 6 == by_path.task.num_clients
        assert torch.equal(by_name.federation.params, by_path.federation.params)
        assert by_name.run().rounds == 2
    finally:
        TASKS.unregister("regression-example")
    with pytest.raises(fedloom.ConfigError, match="must be an import path"):
        Experiment.from_config(task_config(tmp_path, "gone", **{"task.factory": "nothing"}))
