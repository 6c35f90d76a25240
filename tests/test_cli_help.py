"""The command line answers fast and honestly: ``--help`` without torch, help text on every
option and no reST in it, ``--set`` values read as TOML but text where a key holds text, one
``error:`` per message, and a bad webhook refused when the config is read."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom.cli import BUILTIN_ENGINES, build_parser, error_line, main
from fedloom.config import load_config, parse_override
from fedloom.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "demo", "partition", "topology", "server", "client", "start", "node",
            "launch", "dashboard"]  # fmt: skip
RST = re.compile(r"``|:(class|func|mod|meth|attr|data):`")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_of_every_command_loads_neither_torch_nor_pydantic() -> None:
    script = f"""
import json, sys
from fedloom.cli import main
for argv in [[]] + [[c] for c in {COMMANDS!r}]:
    try:
        main([*argv, "--help"])
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
print(json.dumps(sorted(m for m in ("torch", "pydantic", "numpy") if m in sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_import_fedloom_is_light_but_every_top_level_name_resolves() -> None:
    script = """
import sys, fedloom
light = "torch" not in sys.modules
names = [getattr(fedloom, n) for n in fedloom.__all__]
print(light, all(n is not None for n in names), fedloom.Task.__module__)
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
        timeout=120,
        check=True,
    ).stdout
    assert out.split() == ["True", "True", "fedloom.task"]


def test_every_option_has_help_and_no_rst() -> None:
    parser = build_parser()
    assert not RST.search(parser.format_help()), parser.format_help()
    commands = subparsers(parser)
    assert sorted(commands) == sorted(COMMANDS)
    for name, sub in commands.items():
        text = sub.format_help()
        assert not RST.search(text), f"{name}:\n{text}"
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_set_help_says_values_are_toml() -> None:
    for name in ("run", "partition", "client", "node"):
        help_text = " ".join(subparsers(build_parser())[name].format_help().split())
        assert "read as TOML" in help_text and "telegram_chat_id=42" in help_text, name


def test_engine_help_names_every_built_in_engine() -> None:
    from fedloom.compose import engines  # noqa: F401  # registers the built-in engines
    from fedloom.registry import ENGINES

    assert set(ENGINES.names()) <= set(BUILTIN_ENGINES)
    help_text = " ".join(subparsers(build_parser())["run"].format_help().split())
    for name in BUILTIN_ENGINES:
        assert name in help_text


def test_set_takes_text_for_a_text_key_and_toml_elsewhere() -> None:
    assert parse_override("notify.telegram_chat_id=42") == ("notify.telegram_chat_id", "42")
    assert parse_override("notify.telegram_chat_id=-100123") == (
        "notify.telegram_chat_id",
        "-100123",
    )
    assert parse_override("name=2024") == ("name", "2024")
    assert parse_override("name=exp1") == ("name", "exp1")
    assert parse_override("rounds=4") == ("rounds", 4)
    assert parse_override("output.progress=true") == ("output.progress", True)
    assert parse_override("runtime.address='h:1'") == ("runtime.address", "h:1")
    cfg = load_config(None, ["notify.telegram_chat_id=42", "name=2024", "train.lr=1"])
    assert (cfg.notify.telegram_chat_id, cfg.name, cfg.train.lr) == ("42", "2024", 1.0)


@pytest.mark.parametrize(
    "url",
    ["hooks.example.com/x", "http://", "ftp://example.com/x", "https://h:port/x", "https://a b"],
)
def test_a_malformed_webhook_url_is_refused_when_the_config_is_read(url: str) -> None:
    with pytest.raises(ConfigError, match=r"notify\.webhook_url"):
        load_config(None, [f"notify.webhook_url={json.dumps(url)}"])


def test_a_good_webhook_url_is_kept() -> None:
    url = "https://hooks.example.com:8443/services/T0/B0?x=1"
    assert load_config(None, [f"notify.webhook_url={json.dumps(url)}"]).notify.webhook_url == url


def test_cli_refuses_a_bad_webhook_before_the_run(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"name = 'w'\nrounds = 1\n[output]\ndir = '{(tmp_path / 'runs').as_posix()}'\n")
    code = main(["run", str(cfg), "--set", "notify.webhook_url='example.com/hook'"])
    err = capsys.readouterr().err
    assert code == 2 and "notify.webhook_url" in err
    assert not (tmp_path / "runs").exists()


def test_an_error_that_names_its_command_has_one_prefix(monkeypatch, capsys) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert main(["start", str(ROOT / "examples" / "mnist_dirichlet.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fedloom start: error: give --role, or run under torchrun/fedloom launch"
    assert error_line(ConfigError("fedloom node: no node 'x'")) == (
        "fedloom node: error: no node 'x'"
    )
    assert error_line(ConfigError("invalid config: a: b")) == "fedloom: error: invalid config: a: b"
    assert error_line(ConfigError("fedloom partition shows ...; x: y")).startswith(
        "fedloom: error: fedloom partition shows"
    )
