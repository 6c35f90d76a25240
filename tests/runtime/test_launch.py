"""Roles from torchrun-style environment variables, and ``fedloom launch``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fedloom import ConfigError
from fedloom.deploy.launch import command_for
from fedloom.deploy.roles import Role, role_from_env

from .conftest import base_config, kill_pids, pids_with_arg, read_metrics, run_dir, with_changes

TORCHRUN = {"WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


# -- roles -------------------------------------------------------------------------------------
def test_rank_0_is_the_aggregator_one_port_above_master_port():
    assert role_from_env({"RANK": "0", **TORCHRUN}) == Role("server", "127.0.0.1:29501")


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_rank_r_is_data_holder_r_minus_1(rank):
    role = role_from_env({"RANK": str(rank), **TORCHRUN})
    assert role == Role("client", "127.0.0.1:29501", rank - 1)


def test_fedloom_port_and_master_addr_choose_where_the_aggregator_is():
    env = {**TORCHRUN, "MASTER_ADDR": "10.1.2.3", "FEDLOOM_PORT": "40123"}
    assert role_from_env({"RANK": "0", **env}) == Role("server", "10.1.2.3:40123")
    assert role_from_env({"RANK": "2", **env}) == Role("client", "10.1.2.3:40123", 1)
    assert role_from_env({"RANK": "1"}) == Role("client", "127.0.0.1:29501", 0)  # defaults


def test_no_rank_means_no_role_and_a_bad_one_is_a_config_error(monkeypatch):
    assert role_from_env({**TORCHRUN}) is None
    assert role_from_env({}) is None
    with pytest.raises(ConfigError, match="RANK"):
        role_from_env({"RANK": "zero", **TORCHRUN})
    with pytest.raises(ConfigError, match="MASTER_PORT"):
        role_from_env({"RANK": "1", "MASTER_PORT": "http"})
    monkeypatch.delenv("RANK", raising=False)
    assert role_from_env() is None  # reads os.environ
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_PORT", "31000")
    monkeypatch.delenv("FEDLOOM_PORT", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert role_from_env() == Role("client", "127.0.0.1:31001", 2)


def test_a_script_runs_as_is_and_a_config_through_fedloom_start():
    script = command_for("train.py", ["--x", "1"])
    assert script[1:] == ["train.py", "--x", "1"]
    assert command_for("run.toml", ["--set", "rounds=1"])[1:] == [
        "-m", "fedloom", "start", "run.toml", "--set", "rounds=1"
    ]  # fmt: skip


# -- fedloom launch ----------------------------------------------------------------------------
@pytest.fixture
def launched(procs, tmp_path):
    """Start ``fedloom launch``; afterwards kill whatever it left running for this test."""
    needles: list[str] = []

    def start(*args: str, needle: str):
        needles.append(needle)
        return procs.fedloom("launch", "launch", *args)

    yield start
    for needle in needles:
        kill_pids(pids_with_arg(needle))


PREFIX = re.compile(r"^\[(aggregator|client \d+)\] ")


def labelled(output: str) -> dict[str, list[str]]:
    """Output lines by their "[label]" prefix; every line must have one."""
    out: dict[str, list[str]] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        m = PREFIX.match(line)
        assert m, f"line without a role prefix: {line!r}"
        out.setdefault(m.group(1), []).append(line[m.end() :])
    return out


def test_launch_runs_an_aggregator_and_clients_from_a_config(tmp_path, launched):
    cfg = with_changes(
        base_config(tmp_path / "net", "launched"),
        rounds=2,
        **{"data.num_clients": 2, "strategy.clients_per_round": 2},
    )
    config = tmp_path / "launched.json"
    config.write_text(json.dumps(cfg))
    proc = launched("--nproc", "3", str(config), needle=str(config))
    assert proc.wait(180) == 0, proc.output()
    lines = labelled(proc.output())
    assert set(lines) == {"aggregator", "client 0", "client 1"}
    assert any("aggregator done: 2 rounds" in ln for ln in lines["aggregator"])
    assert any("client 0 done after" in ln for ln in lines["client 0"])
    assert any("client 1 done after" in ln for ln in lines["client 1"])
    assert [r["round"] for r in read_metrics(run_dir(cfg))] == [1, 2]
    assert [r["clients"] for r in read_metrics(run_dir(cfg))] == [2, 2]
    assert (run_dir(cfg) / "model.safetensors").exists()
    assert pids_with_arg(str(config)) == []


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
def test_a_finished_async_run_under_launch_exits_0(tmp_path, launched, strategy):
    """When the last version is made, the other client is still training: by the time it
    uploads, the aggregator is gone. launch stops it; that is no failure (it exited 1)."""
    cfg = with_changes(
        base_config(tmp_path / "net", strategy),
        rounds=2,
        **{
            "data.num_clients": 2,
            "strategy.name": strategy,
            "strategy.clients_per_round": 2,
            "model.name": "mlp",  # rounds of seconds: longer than the aggregator lingers
            "train.batch_size": 10,
            "train.local_epochs": 5,
        },
    )
    if strategy == "fedbuff":
        cfg["strategy"]["options"] = {"buffer_size": 1}
    config = tmp_path / f"{strategy}.json"
    config.write_text(json.dumps(cfg))
    proc = launched("--nproc", "3", str(config), needle=str(config))
    assert proc.wait(180) == 0, proc.output()
    assert "aggregator done: 2 rounds" in proc.output()
    assert [r["round"] for r in read_metrics(run_dir(cfg))][-1] == 2
    assert pids_with_arg(str(config)) == []


def test_launch_runs_a_script_in_every_process_with_its_rank(tmp_path, launched):
    script = tmp_path / "show_rank.py"
    script.write_text(
        "import os, sys\n"
        "e = os.environ\n"
        "print('rank', e['RANK'], 'local', e['LOCAL_RANK'], 'of', e['WORLD_SIZE'],\n"
        "      'at', e['MASTER_ADDR'], e['MASTER_PORT'], e['FEDLOOM_PORT'], 'args', sys.argv[1:])\n"
    )
    proc = launched("--nproc", "3", str(script), "--flag", "x", needle=str(script))
    assert proc.wait(60) == 0, proc.output()
    lines = labelled(proc.output())
    found = {}
    for label, rank in (("aggregator", 0), ("client 0", 1), ("client 1", 2)):
        (line,) = lines[label]
        m = re.fullmatch(
            rf"rank {rank} local {rank} of 3 at 127\.0\.0\.1 (\d+) (\d+) args \['--flag', 'x'\]",
            line,
        )
        assert m, line
        found[label] = m.groups()
    assert len(set(found.values())) == 1  # every process got the same ports
    master, aggregator = found["aggregator"]
    assert master != aggregator


@pytest.mark.parametrize("bad", ["invalid config", "aggregator fails", "a client fails"])
def test_launch_with_a_bad_config_ends_every_process_with_a_non_zero_exit(tmp_path, launched, bad):
    cfg = with_changes(
        base_config(tmp_path / "net", "bad", retry_for=300.0),
        **{"data.num_clients": 2, "strategy.clients_per_round": 2},
    )
    nproc = 3
    if bad == "invalid config":  # every process refuses it
        cfg["train"]["no_such_key"] = 1
        nproc = 2
    elif bad == "aggregator fails":  # valid for the clients; no run directory can be made
        blocker = tmp_path / "not_a_dir"
        blocker.write_text("a file where the run directory should go")
        cfg["output"]["dir"] = blocker.as_posix()
    else:  # a second data holder the task does not have; the aggregator would wait for it
        cfg["data"]["num_clients"] = 1
        cfg["strategy"]["clients_per_round"] = 1
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(cfg))
    t0 = time.monotonic()
    proc = launched("--nproc", str(nproc), str(config), needle=str(config))
    rc = proc.wait(120)  # far less than the clients' retry_for: they were ended, not waited for
    output = proc.output()
    assert rc != 0, output
    assert time.monotonic() - t0 < 120
    assert pids_with_arg(str(config)) == [], "launch left processes running"
    if bad == "invalid config":  # refused by launch itself, before any process starts
        assert "fedloom: error: invalid config" in output and "no_such_key" in output, output
        return
    lines = labelled(output)
    if bad == "aggregator fails":
        assert any("fedloom: error: output.dir" in ln for ln in lines["aggregator"]), output
    else:
        assert any(
            "client id 1 is not one of the task's 1 clients" in ln for ln in lines["client 1"]
        )
    assert not Path(cfg["output"]["dir"], "bad", "model.safetensors").exists()
