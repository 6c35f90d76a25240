"""Config loading and validation, --set overrides, asmallbit conf.json, the CLI, notifications."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_overrides
from torch import nn

import fedloom
from fedloom import Config, ConfigError, load_config
from fedloom.cli import main
from fedloom.config import from_asmallbit, parse_override
from fedloom.registry import DATASETS, ENGINES, MODELS, PARTITIONERS, STRATEGIES
from fedloom.simulation import InProcessClients

SMALL_TOML = """\
name = "{name}"
seed = 3
rounds = 2

[data]
dataset = "mnist5k"
num_clients = 10
partition = "iid"

[model]
name = "logreg"

[train]
batch_size = 20
lr = 0.05

[strategy]
clients_per_round = 3

[output]
dir = '{out}'
progress = false
tensorboard = false
"""


def write_config(tmp_path: Path, name: str = "small") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL_TOML.format(name=name, out=(tmp_path / "runs").as_posix()))
    return path


# -- validation errors ----------------------------------------------------------------------
def config_error(source, overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(source, list(overrides))
    return str(err.value)


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.data.dataset == "mnist5k"
    assert load_config(cfg) == cfg


def test_unknown_key_in_a_section_lists_the_allowed_keys() -> None:
    msg = config_error({"train": {"lrr": 0.1}})
    assert "train.lrr: unknown key" in msg
    for key in ("local_epochs", "batch_size", "lr", "momentum", "optimizer"):
        assert key in msg
    msg = config_error({"colour": "blue"})
    assert "colour: unknown key" in msg and "rounds" in msg and "strategy" in msg
    msg = config_error({"notify": {"telegram": "x"}})
    assert "notify.telegram: unknown key" in msg and "telegram_token" in msg


@pytest.mark.parametrize(
    "source, key, registry",
    [
        ({"data": {"dataset": "cifar99"}}, "data.dataset", DATASETS),
        ({"model": {"name": "resnet999"}}, "model.name", MODELS),
        ({"data": {"partition": "pathological"}}, "data.partition", PARTITIONERS),
        ({"strategy": {"name": "fedmagic"}}, "strategy.name", STRATEGIES),
        ({"simulation": {"engine": "gpu"}}, "simulation.engine", ENGINES),
    ],
)
def test_unknown_names_list_the_registered_ones(source, key: str, registry) -> None:
    msg = config_error(source)
    bad = next(iter(next(iter(source.values())).values()))
    assert key in msg and repr(bad) in msg
    assert registry.names() and all(name in msg for name in registry.names())


def test_bad_literal_lists_allowed_values() -> None:
    msg = config_error({"train": {"optimizer": "rmsprop"}})
    assert "train.optimizer" in msg and "'sgd'" in msg and "'adam'" in msg
    assert "rmsprop" in msg


@pytest.mark.parametrize(
    "source, key",
    [
        ({"rounds": 0}, "rounds"),
        ({"train": {"lr": -0.1}}, "train.lr"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"data": {"num_clients": 0}}, "data.num_clients"),
        ({"data": {"alpha": 0}}, "data.alpha"),
        ({"strategy": {"fraction": 1.5}}, "strategy.fraction"),
        ({"strategy": {"fraction": 0}}, "strategy.fraction"),
        ({"eval": {"every": 0}}, "eval.every"),
        ({"rounds": "many"}, "rounds"),
    ],
)
def test_out_of_range_numbers_name_the_key(source, key: str) -> None:
    msg = config_error(source)
    assert f"{key}:" in msg
    assert "(got " in msg


def test_target_metric_and_value_go_together() -> None:
    assert "target_value" in config_error({"eval": {"target_metric": "accuracy"}})


def test_invalid_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    msg = config_error(bad)
    assert "bad.toml" in msg and "TOML" in msg
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{rounds: 3")
    assert "JSON" in config_error(bad_json)
    assert "does not exist" in config_error(tmp_path / "nope.toml")


# -- overrides ------------------------------------------------------------------------------
def test_set_overrides_with_dotted_keys_and_toml_values(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    cfg = load_config(
        path,
        [
            "train.lr=0.5",
            "rounds=7",
            "model.name=mlp",  # not valid TOML: taken as a plain string
            'data.dataset="mnist5k"',
            "output.figures=false",
            "strategy.fraction=0.2",
            "model.options={hidden = 16}",
            "data.options.test_size=500",
            "eval.target_metric=accuracy",
            "eval.target_value=0.9",
        ],
    )
    assert cfg.train.lr == 0.5 and cfg.rounds == 7 and cfg.seed == 3
    assert cfg.model.name == "mlp" and cfg.model.options == {"hidden": 16}
    assert cfg.output.figures is False and cfg.output.progress is False
    assert cfg.strategy.fraction == 0.2 and cfg.strategy.clients_per_round is None
    assert cfg.data.options == {"test_size": 500}
    assert cfg.eval.target_metric == "accuracy" and cfg.eval.target_value == 0.9
    assert cfg.data.num_clients == 10  # untouched keys keep the file's values


def test_load_config_does_not_mutate_its_input() -> None:
    source = {"train": {"lr": 0.1}, "rounds": 3}
    first = load_config(source, ["train.momentum=0.9", "rounds=5"])
    assert first.train.momentum == 0.9 and first.rounds == 5
    assert source == {"train": {"lr": 0.1}, "rounds": 3}
    # so a sweep over one base dict does not leak one run's overrides into the next
    second = load_config(source, ["train.weight_decay=0.01"])
    assert second.train.momentum == 0.0


def test_parse_override() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override(" x = true") == ("x", True)
    assert parse_override("name=hello world") == ("name", "hello world")
    for bad in ("train.lr", "=3"):
        with pytest.raises(ConfigError, match="key=value"):
            parse_override(bad)


def test_bad_overrides_are_config_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert "train.foo: unknown key" in config_error(path, ["train.foo=1"])
    assert "not a section" in config_error(path, ["rounds.x=1"])
    assert "train.lr" in config_error(path, ["train.lr=-1"])


# -- asmallbit conf.json ----------------------------------------------------------------------
ASMALLBIT = {
    "model_name": "mlp",
    "type": "mnist5k",
    "global_epochs": 3,
    "local_epochs": 2,
    "alpha": 0.3,
    "batch_size": 32,
    "lr": 0.02,
    "lambda": 0,
    "k": 0,
    "is_push_enable": True,
    "push_type": "telegram",
    "telegram_id": 123456789,
    "api_key": "123:ABC",
    "proxy_type": "http",
    "proxy_host": "127.0.0.1",
    "proxy_port": 7890,
    "proxy_username": "",
    "proxy_password": "",
}


def test_asmallbit_conf_json_maps_to_the_nested_config(tmp_path: Path) -> None:
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(ASMALLBIT))
    cfg = load_config(path)
    assert cfg.model.name == "mlp"
    assert cfg.data.dataset == "mnist5k"
    assert cfg.rounds == 3
    assert cfg.train.local_epochs == 2
    assert cfg.data.alpha == 0.3 and cfg.data.partition == "dirichlet"
    assert cfg.train.batch_size == 32 and cfg.train.lr == 0.02
    assert cfg.strategy.name == "fedavg" and cfg.strategy.options == {}  # lambda 0: no FedProx
    assert cfg.strategy.clusters is None  # k 0: no clustering
    assert cfg.notify.telegram_token == "123:ABC"
    assert cfg.notify.telegram_chat_id == "123456789"
    assert cfg.notify.proxy == "http://127.0.0.1:7890"
    # overrides still apply on top, with fedloom's own keys
    cfg = load_config(path, ["rounds=1", "output.progress=false"])
    assert cfg.rounds == 1 and cfg.output.progress is False and cfg.model.name == "mlp"


def test_asmallbit_translation_details() -> None:
    out = from_asmallbit(
        {
            **ASMALLBIT,
            "lambda": 0.01,
            "k": 3,
            "proxy_username": "u",
            "proxy_password": "p",
            "seed": 9,
        }
    )
    assert out["strategy"]["name"] == "fedprox" and out["strategy"]["options"] == {"mu": 0.01}
    assert out["strategy"]["clusters"] == 3
    assert out["notify"]["proxy"] == "http://u:p@127.0.0.1:7890"
    assert out["seed"] == 9
    clustered = from_asmallbit({**ASMALLBIT, "k": 3})  # k > 1 without lambda: k-means FL
    assert clustered["strategy"] == {"clusters": 3, "name": "clustered"}
    assert load_config({**ASMALLBIT, "k": 3}).strategy.name == "clustered"
    quiet = from_asmallbit({**ASMALLBIT, "is_push_enable": False, "proxy_type": ""})
    assert "notify" not in quiet
    assert load_config({**ASMALLBIT, "is_push_enable": False}).notify.telegram_token is None


# -- the command line -------------------------------------------------------------------------
def test_cli_run_in_process(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path)
    code = main(["run", str(path), "--set", "rounds=1", "--set", "output.figures=false"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fedloom: small: 1 rounds (max_rounds); accuracy 0." in out and "test_loss" in out
    run_dir = tmp_path / "runs" / "small"
    assert f"results in {run_dir}" in out
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "report.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["rounds"] == 1


class InterruptedOnce(nn.Module):
    """logreg that raises KeyboardInterrupt in its first training step after an evaluation."""

    armed = True
    evaluated = False

    def __init__(self, input_shape, num_classes) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        cls = type(self)
        if not torch.is_grad_enabled():
            cls.evaluated = True
        elif cls.armed and cls.evaluated:
            cls.armed = False
            raise KeyboardInterrupt
        return self.fc(x.flatten(1))


def test_cli_interrupt_then_resume(tmp_path: Path, capsys, register_temp_model) -> None:
    InterruptedOnce.armed, InterruptedOnce.evaluated = True, False
    register_temp_model("test_interrupted_once", InterruptedOnce)
    path = write_config(tmp_path, "ctrlc")
    argv = ["run", str(path), "--set", "model.name=test_interrupted_once"]
    argv += ["--set", "output.figures=false"]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert "interrupted; continue with --resume" in err
    run_dir = tmp_path / "runs" / "ctrlc"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert main([*argv, "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "ctrlc: 2 rounds (max_rounds)" in out
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").open()]
    assert rounds == [1, 2]
    assert (run_dir / "model.safetensors").is_file()


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sub")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedloom", "run", str(path), "--set", "train.lr=0.1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fedloom: sub: 2 rounds (max_rounds); accuracy" in proc.stdout
    run_dir = tmp_path / "runs" / "sub"
    assert f"results in {run_dir}" in proc.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["lr"] == 0.1 and config["seed"] == 3
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "figures" / "accuracy.png").is_file()


def test_cli_partition_prints_the_report(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path)
    figure = tmp_path / "split.png"
    code = main(["partition", str(path), "--set", "data.num_clients=4", "--figure", str(figure)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "mnist5k: 4000 train samples, iid split" in out
    assert "Partition: 4 clients, 4000 samples" in out and "exact cover" in out
    assert f"figure: {figure}" in out and figure.read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "runs").exists()  # no training, no run directory


@pytest.mark.parametrize(
    "argv_tail, needle",
    [
        (["--set", "train.optimizer=rmsprop"], "train.optimizer"),
        (["--set", "model.name=nosuchmodel"], "model.name: unknown model 'nosuchmodel'"),
        (["--set", "train.lrr=1"], "train.lrr: unknown key"),
    ],
)
def test_cli_bad_config_exits_2(tmp_path: Path, capsys, argv_tail, needle: str) -> None:
    path = write_config(tmp_path)
    assert main(["run", str(path), *argv_tail]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("fedloom: error: ") and needle in err
    assert out == ""


def test_cli_bad_config_files_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    assert main(["run", str(bad)]) == 2
    assert "bad.toml" in capsys.readouterr().err
    assert main(["partition", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- notifications end to end ------------------------------------------------------------------
def notify_overrides(url: str) -> list[str]:
    return [
        f"notify.webhook_url='{url}/hook'",
        "notify.telegram_token='123:SECRET'",
        "notify.telegram_chat_id='42'",
        f"notify.telegram_api_base='{url}'",
        "output.figures=false",
        "output.tensorboard=false",
        "rounds=1",
    ]


def test_finished_run_notifies_webhook_and_telegram(tmp_path: Path, http_server) -> None:
    overrides = run_overrides(tmp_path, name="notified") + notify_overrides(http_server.url)
    result = fedloom.run(None, overrides)
    assert result.stop_reason == "max_rounds"
    paths = [p for p, _ in http_server.requests]
    assert sorted(paths) == ["/bot123:SECRET/sendMessage", "/hook"]
    hook = dict(http_server.requests)["/hook"]
    assert hook["event"] == "finished"
    assert hook["title"] == "fedloom run notified finished"
    assert "1 rounds" in hook["text"] and "accuracy" in hook["text"]
    tg = dict(http_server.requests)["/bot123:SECRET/sendMessage"]
    assert tg["chat_id"] == "42"
    assert tg["text"].startswith("fedloom run notified finished\n\n")


class Exploding(nn.Module):
    def __init__(self, input_shape, num_classes) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        raise RuntimeError("kaboom in forward")


def test_failed_run_notifies_and_exits_2(
    tmp_path: Path, http_server, register_temp_model, capsys
) -> None:
    register_temp_model("test_exploding", Exploding)
    cfg = write_config(tmp_path, "doomed")
    argv = ["run", str(cfg), "--set", "model.name=test_exploding"]
    for item in notify_overrides(http_server.url):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fedloom: error: client" in err and "round 1" in err and "kaboom in forward" in err
    requests = dict(http_server.requests)
    assert sorted(requests) == ["/bot123:SECRET/sendMessage", "/hook"]
    assert requests["/hook"]["event"] == "failed"
    assert requests["/hook"]["title"] == "fedloom run doomed failed"
    assert "kaboom in forward" in requests["/hook"]["text"]
    assert "failed" in requests["/bot123:SECRET/sendMessage"]["text"]


# -- engines: the ENGINES registry is what simulation.engine and --engine name -----------------
def test_an_engine_registered_by_name_runs_from_config_and_command_line(
    tmp_path: Path, capsys
) -> None:
    """One builder and one registration line make an engine: the config and ``--engine``
    take its name, and the round loop trains through the backend it builds."""
    built: list[InProcessClients] = []

    def counting(cfg: Config, task):  # a builder: (config, task) -> (spec -> backend)
        def make(spec) -> InProcessClients:
            built.append(InProcessClients(task, cfg.seed))
            return built[-1]

        return make

    ENGINES.register("counting", counting)
    try:
        exp = fedloom.Experiment.from_config(
            None, run_overrides(tmp_path, "eng", rounds=1, **{"simulation.engine": "counting"})
        )
        assert exp.federation.backend is built[0]
        assert exp.run().rounds == 1
        argv = ["run", str(write_config(tmp_path, "cli-eng")), "--engine", "counting"]
        assert main([*argv, "--set", "rounds=1"]) == 0, capsys.readouterr().err
        assert len(built) == 2
    finally:
        ENGINES.unregister("counting")
    assert "counting" in config_error({"simulation": {"engine": "counting"}})


@pytest.mark.parametrize(
    "engine,needle",
    [
        ("torchrun", "simulation.engine = 'torchrun': start the run under torchrun"),
        ("hierarchy", "simulation.engine = 'hierarchy' needs a [topology] section"),
    ],
)
def test_engines_the_run_chooses_itself_are_refused_elsewhere(
    tmp_path: Path, engine: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        fedloom.Experiment.from_config(
            None, run_overrides(tmp_path, engine, **{"simulation.engine": engine})
        )
