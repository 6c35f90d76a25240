"""Bad configs and command lines end in one ``fedloom: error: ...`` line, never a traceback.

Each case runs the real command line (``fedloom.cli.main``) on a small valid config changed in
one place, and checks the exit code is not 0, that stderr names the key or argument and that
no Python traceback escaped. A few cases need their own process (a port in use, a client
whose aggregator is not there); they run ``python -m fedloom`` with a bounded timeout.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedloom.cli import main

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "name": "bad",
    "seed": 0,
    "rounds": 1,
    "data": {"dataset": "mnist5k", "num_clients": 4, "partition": "shards"},
    "model": {"name": "logreg"},
    "train": {"local_epochs": 1, "batch_size": 50, "lr": 0.05},
    "strategy": {"name": "fedavg", "clients_per_round": 2},
    "output": {"progress": False, "tensorboard": False, "figures": False},
    "runtime": {"retry_for": 2.0},
}


CLIENT = ("client", "{cfg}", "--client-id", "0")
SERVER = ("server", "{cfg}")


@dataclass(frozen=True)
class Bad:
    """``argv`` with ``{cfg}`` (the config file) and ``{tmp}`` filled in; ``needle``: what the
    error line must name; ``file``: the config file's text (and suffix) instead of BASE."""

    id: str
    argv: tuple[str, ...]
    needle: str
    changes: dict[str, Any] = field(default_factory=dict)
    file: tuple[str, str | bytes] | None = None


def sets(*items: str, needle: str, cmd: str = "run") -> Bad:
    """``fedloom CMD CONFIG --set ITEM ...`` (a client as client 0)."""
    command = CLIENT if cmd == "client" else (cmd, "{cfg}")
    argv = (*command, *(a for item in items for a in ("--set", item)))
    return Bad(f"{cmd}:{' '.join(items)}", argv, needle)


def changed(id: str, needle: str, cmd: tuple[str, ...] = ("run", "{cfg}"), **changes) -> Bad:
    """``fedloom CMD`` on BASE with dotted keys changed in the file itself."""
    return Bad(id, cmd, needle, changes={k.replace("__", "."): v for k, v in changes.items()})


def text(id: str, suffix: str, content: str | bytes, needle: str) -> Bad:
    return Bad(id, ("run", "{cfg}"), needle, file=(suffix, content))


CASES: list[Bad] = [
    # -- top-level keys
    sets("rounds=0", needle="rounds"),
    sets("rounds=-1", needle="rounds"),
    sets("rounds=many", needle="rounds"),
    sets("rounds=1.5", needle="rounds"),
    sets("rounds=nan", needle="rounds"),
    sets("seed=-1", needle="seed"),
    sets("seed=1.5", needle="seed"),
    sets("seed=18446744073709551616", needle="seed"),
    sets("seed='zero'", needle="seed"),
    sets("name=''", needle="name"),
    sets("name='../escape'", needle="name"),
    sets("name='a/b'", needle="name"),
    sets("foo=1", needle="foo"),
    # -- [data]
    sets("data.dataset='nope'", needle="data.dataset"),
    sets("data.dataset=5", needle="data.dataset"),
    sets("data.num_clients=0", needle="data.num_clients"),
    sets("data.num_clients=-2", needle="data.num_clients"),
    sets("data.num_clients='x'", needle="data.num_clients"),
    sets("data.num_clients=100000", needle="data"),
    sets("data.partition='nope'", needle="data.partition"),
    sets("data.partition='natural'", needle="data.partition"),
    sets("data.partition='dirichlet'", "data.alpha=0", needle="data.alpha"),
    sets("data.partition='dirichlet'", "data.alpha=nan", needle="data.alpha"),
    sets("data.partition='dirichlet'", "data.alpha=inf", needle="data.alpha"),
    sets("data.partition='dirichlet'", "data.alpha=-inf", needle="data.alpha"),
    sets("data.shards_per_client=0", needle="data.shards_per_client"),
    sets("data.partition='powerlaw'", "data.exponent=nan", needle="data.exponent"),
    sets("data.min_samples=0", needle="data.min_samples"),
    sets("data.partition='powerlaw'", "data.min_samples=5000", needle="data"),
    sets("data.download='maybe'", needle="data.download"),
    sets("data.options={bogus=1}", needle="data.options"),
    sets("data.options=5", needle="data.options"),
    sets("data.dataset='mnist'", "data.root='/nonexistent/mnist'", needle="/nonexistent/mnist"),
    sets("data.lpha=1", needle="data.lpha"),
    # -- [model]
    sets("model.name='nope'", needle="model.name"),
    sets("model.options={bogus=1}", needle="model.options"),
    sets("model.name='mlp'", "model.options={hidden=-5}", needle="model"),
    sets("model.name='mlp'", "model.options={hidden='x'}", needle="model"),
    sets("model.name='mlp'", "model.options={hidden=nan}", needle="model.options"),
    sets("model.name='cnn'", "data.dataset='synthetic'", "data.partition='iid'", needle="model"),
    sets("model.options=[1]", needle="model.options"),
    # -- [train]
    sets("train.local_epochs=0", needle="train.local_epochs"),
    sets("train.local_epochs=2.5", needle="train.local_epochs"),
    sets("train.batch_size=0", needle="train.batch_size"),
    sets("train.batch_size='ten'", needle="train.batch_size"),
    sets("train.lr=0", needle="train.lr"),
    sets("train.lr=-0.1", needle="train.lr"),
    sets("train.lr=nan", needle="train.lr"),
    sets("train.lr=inf", needle="train.lr"),
    sets("train.lr=-inf", needle="train.lr"),
    sets("train.lr='fast'", needle="train.lr"),
    sets("train.momentum=-1", needle="train.momentum"),
    sets("train.momentum=inf", needle="train.momentum"),
    sets("train.momentum=nan", needle="train.momentum"),
    sets("train.weight_decay=nan", needle="train.weight_decay"),
    sets("train.weight_decay=inf", needle="train.weight_decay"),
    sets("train.optimizer='rmsprop'", needle="train.optimizer"),
    sets("train.device='tpu'", needle="train.device"),
    sets("train.device='cuda:63'", needle="train.device"),
    sets("train.device='gpu'", needle="train.device"),
    sets("train.precision='fp8'", needle="train.precision"),
    sets("train.deterministic='maybe'", needle="train.deterministic"),
    Bad("client:--device gpu", (*CLIENT, "--device", "gpu"), "train.device: 'gpu'"),
    sets("train.stragglers=2", needle="train.stragglers"),
    sets("train.stragglers=nan", needle="train.stragglers"),
    sets("train.state_memory_mb=0", needle="train.state_memory_mb"),
    sets("train.state_memory_mb=nan", needle="train.state_memory_mb"),
    # -- [strategy]
    sets("strategy.name='nope'", needle="strategy.name"),
    sets("strategy.clients_per_round=0", needle="strategy.clients_per_round"),
    sets("strategy.clients_per_round=1000", needle="strategy.clients_per_round"),
    sets("strategy.fraction=0", needle="strategy.fraction"),
    sets("strategy.fraction=1.5", needle="strategy.fraction"),
    sets("strategy.fraction=nan", needle="strategy.fraction"),
    sets("strategy.clusters=0", needle="strategy.clusters"),
    sets("strategy.every_seconds=0", needle="strategy.every_seconds"),
    sets("strategy.every_seconds=nan", needle="strategy.every_seconds"),
    sets("strategy.options={bogus=1}", needle="strategy.options"),
    sets("strategy.options.aggregator='nope'", needle="aggregator"),
    sets("strategy.options.aggregator={beta=0.1}", needle="aggregator"),
    sets("strategy.options.aggregator={name='trimmed_mean',beta=5}", needle="aggregator"),
    sets("strategy.options.aggregator={name='median',bogus=1}", needle="aggregator"),
    sets("strategy.name='fedprox'", "strategy.options.mu=nan", needle="strategy.options"),
    sets("strategy.name='fedprox'", "strategy.options.mu='x'", needle="strategy"),
    sets("strategy.name='fedprox'", "strategy.options.mu=-1", needle="strategy"),
    sets("strategy.name='fedasync'", needle="strategy"),
    # -- [eval]
    sets("eval.every=0", needle="eval.every"),
    sets("eval.target_metric='nope'", "eval.target_value=0.9", needle="eval.target_metric"),
    sets("eval.target_metric='accuracy'", needle="eval.target"),
    sets("eval.target_metric='accuracy'", "eval.target_value=nan", needle="eval.target_value"),
    # -- [output]
    sets("output.dir='/proc/fedloom-no'", needle="output.dir"),
    sets("output.progress='x'", needle="output.progress"),
    sets("output.checkpoint='sometimes'", needle="output.checkpoint"),
    sets("output.colour=true", needle="output.colour"),
    # -- [simulation], [attack], [topology]
    sets("simulation.engine='gpu'", needle="simulation.engine"),
    sets("simulation.workers=0", needle="simulation.workers"),
    sets("simulation.threads=-1", needle="simulation.threads"),
    sets("attack.kind='nope'", needle="attack.kind"),
    sets("attack.fraction=2", needle="attack.fraction"),
    sets("attack.kind='sign_flip'", "attack.scale=nan", needle="attack.scale"),
    sets("topology.edge_rounds=0", needle="topology"),
    sets("topology.nodes=[{name='a'}]", "topology.edges=[['a','b']]", needle="topology"),
    # -- [runtime], checked by every command
    sets("runtime.min_clients=0", needle="runtime.min_clients"),
    sets("runtime.min_clients=50", needle="runtime.min_clients"),
    sets("runtime.quorum=0", needle="runtime.quorum"),
    sets("runtime.quorum=50", needle="runtime.quorum"),
    sets("runtime.heartbeat_timeout=nan", needle="runtime.heartbeat_timeout"),
    sets("runtime.heartbeat_timeout=inf", needle="runtime.heartbeat_timeout"),
    sets("runtime.retry_for=0", needle="runtime.retry_for"),
    sets("runtime.retry_for=nan", needle="runtime.retry_for"),
    sets("runtime.start_timeout=0", needle="runtime.start_timeout"),
    sets("runtime.chunk_size=0", needle="runtime.chunk_size"),
    sets("runtime.bulk_port=70000", needle="runtime.bulk_port"),
    sets("runtime.bulk_port=-1", needle="runtime.bulk_port"),
    sets("runtime.address='nohost'", needle="runtime.address"),
    sets("runtime.address='host:99999'", needle="runtime.address"),
    sets("runtime.address='host:port'", needle="runtime.address"),
    sets("runtime.tokens={0=7}", needle="runtime.tokens"),
    # -- --set syntax
    Bad("set:no-equals", ("run", "{cfg}", "--set", "rounds"), "--set"),
    Bad("set:no-key", ("run", "{cfg}", "--set", "=3"), "--set"),
    Bad("set:not-a-section", ("run", "{cfg}", "--set", "rounds.x=1"), "rounds"),
    Bad("set:section-value", ("run", "{cfg}", "--set", "train=5"), "train"),
    Bad("set:list", ("run", "{cfg}", "--set", "train.lr=[1,2]"), "train.lr"),
    Bad("set:empty-part", ("run", "{cfg}", "--set", "train..lr=1"), "train"),
    # -- config files
    Bad("file:missing", ("run", "{tmp}/missing.toml"), "missing.toml"),
    Bad("file:directory", ("run", "{tmp}"), "{tmp}"),
    text("file:bad-toml", ".toml", "rounds = = 3\n", "TOML"),
    text("file:bad-json", ".json", '{"rounds": 3,}', "JSON"),
    text("file:json-list", ".json", "[1, 2]", "config"),
    text("file:json-list-of-dicts", ".json", '[{"a": 1}]', "config"),
    text("file:not-utf8", ".toml", b"rounds = 3\nname = '\xff\xfe'\n", "UTF-8"),
    text("file:toml-nan", ".toml", "[train]\nlr = nan\n", "train.lr"),
    text("file:toml-inf", ".toml", "[train]\nlr = inf\n", "train.lr"),
    text("file:toml-neg-inf", ".toml", "[train]\nlr = -inf\n", "train.lr"),
    text("file:json-infinity", ".json", '{"train": {"lr": Infinity}}', "train.lr"),
    text("file:json-neg-infinity", ".json", '{"train": {"lr": -Infinity}}', "train.lr"),
    text("file:json-nan", ".json", '{"train": {"momentum": NaN}}', "train.momentum"),
    text("file:json-seed", ".json", '{"seed": -1}', "seed"),
    text("file:asmallbit-lr", ".json", '{"model_name": "logreg", "lr": Infinity}', "train.lr"),
    changed("file:unwritable-output", "output.dir", output__dir="{tmp}/blocker/runs"),
    # -- command-line flags
    Bad("argv:none", (), "command"),
    Bad("argv:unknown-command", ("train",), "command"),
    Bad("argv:unknown-flag", ("run", "{cfg}", "--bogus"), "--bogus"),
    Bad("argv:engine", ("run", "{cfg}", "--engine", "gpu"), "--engine"),
    Bad("argv:processes-0", ("run", "{cfg}", "--processes", "0"), "--processes"),
    Bad("argv:processes-neg", ("run", "{cfg}", "--processes", "-3"), "--processes"),
    Bad("argv:processes-x", ("run", "{cfg}", "--processes", "x"), "--processes"),
    Bad("launch:nproc-0", ("launch", "--nproc", "0", "{cfg}"), "--nproc"),
    Bad("launch:nproc-neg", ("launch", "--nproc", "-2", "{cfg}"), "--nproc"),
    Bad("launch:nproc-1", ("launch", "--nproc", "1", "{cfg}"), "--nproc"),
    Bad("launch:nproc-x", ("launch", "--nproc", "x", "{cfg}"), "--nproc"),
    Bad("launch:missing-config", ("launch", "--nproc", "3", "{tmp}/missing.json"), "missing"),
    Bad("launch:no-topology", ("launch", "{cfg}"), "--nproc"),
    Bad("launch:port-big", ("launch", "--nproc", "2", "--master-port", "70000", "{cfg}"), "port"),
    Bad("launch:port-neg", ("launch", "--nproc", "2", "--master-port", "-1", "{cfg}"), "port"),
    Bad("launch:bad-config", ("launch", "--nproc", "2", "{cfg}", "--set", "rounds=0"), "rounds"),
    Bad("client:id-neg", ("client", "{cfg}", "--client-id", "-1"), "client"),
    Bad("client:id-x", ("client", "{cfg}", "--client-id", "x"), "--client-id"),
    Bad("client:id-big", ("client", "{cfg}", "--client-id", "99"), "client id 99"),
    Bad("client:no-id", ("client", "{cfg}"), "--client-id"),
    Bad("client:server-no-port", (*CLIENT, "--server", "nohost"), "--server"),
    Bad("client:server-port-x", (*CLIENT, "--server", "host:port"), "--server"),
    Bad("client:server-port-0", (*CLIENT, "--server", "127.0.0.1:0"), "--server"),
    Bad("client:server-colon", (*CLIENT, "--server", ":"), "--server"),
    Bad("client:bad-config", (*CLIENT, "--set", "train.lr=inf"), "train.lr"),
    Bad(
        "client:data-missing",
        (*CLIENT, "--data", "/nonexistent/d", "--set", "data.dataset='mnist'"),
        "/nonexistent/d",
    ),
    sets("runtime.tls_ca='/nonexistent/ca.pem'", needle="runtime.tls_ca", cmd="client"),
    sets("runtime.tls_ca='{tmp}'", needle="runtime.tls_ca", cmd="client"),
    sets("runtime.tls_client_ca='/nonexistent/ca.pem'", needle="runtime.tls", cmd="server"),
    sets("runtime.tls_cert='/nonexistent/c.pem'", needle="runtime.tls", cmd="server"),
    sets("runtime.tls_key='/nonexistent/k.pem'", needle="runtime.tls", cmd="server"),
    sets(
        "runtime.tls_cert='/nonexistent/c.pem'",
        "runtime.tls_key='/nonexistent/k.pem'",
        needle="runtime.tls_cert",
        cmd="server",
    ),
    Bad("server:address-no-port", (*SERVER, "--address", "x"), "--address"),
    Bad("server:address-port-big", (*SERVER, "--address", "127.0.0.1:99999"), "--address"),
    Bad("server:bad-config", (*SERVER, "--set", "strategy.fraction=2"), "strategy.fraction"),
    Bad("start:no-role", ("start", "{cfg}"), "--role"),
    Bad("start:bad-role", ("start", "{cfg}", "--role", "boss"), "--role"),
    Bad("start:client-no-id", ("start", "{cfg}", "--role", "client"), "--client-id"),
    Bad("start:address", ("start", "{cfg}", "--role", "server", "--address", "a:b:c"), "--address"),
    Bad("node:no-topology", ("node", "{cfg}", "--name", "edge0"), "topology"),
    Bad("node:no-name", ("node", "{cfg}"), "--name"),
    Bad("topology:none", ("topology", "{cfg}"), "topology"),
    Bad("partition:missing", ("partition", "{tmp}/missing.toml"), "missing.toml"),
    Bad("partition:figure", ("partition", "{cfg}", "--figure", "{tmp}/blocker/f.png"), "blocker"),
    Bad("partition:bad-set", ("partition", "{cfg}", "--set", "data.alpha=-1"), "data.alpha"),
    Bad("demo:bad-set", ("demo", "--set", "rounds=0"), "rounds"),
]


def prepare(case: Bad, tmp: Path) -> list[str]:
    """Write the case's config (and a file where a directory would go); its argv."""
    (tmp / "blocker").write_text("a file where a directory should go")
    if case.file is not None:
        suffix, content = case.file
        cfg = tmp / f"config{suffix}"
        cfg.write_bytes(content.encode() if isinstance(content, str) else content)
    else:
        data = json.loads(json.dumps(BASE))
        data["output"]["dir"] = (tmp / "runs").as_posix()
        for dotted, value in case.changes.items():
            *path, last = dotted.split(".")
            d = data
            for k in path:
                d = d.setdefault(k, {})
            d[last] = value.replace("{tmp}", tmp.as_posix()) if isinstance(value, str) else value
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps(data))
    return [a.replace("{cfg}", cfg.as_posix()).replace("{tmp}", tmp.as_posix()) for a in case.argv]


def check(rc: int, err: str, case: Bad, tmp: Path) -> None:
    assert "Traceback" not in err, err
    assert rc not in (0, None), f"accepted: {case.argv}\n{err}"
    lines = [ln for ln in err.splitlines() if re.match(r"fedloom( \w+)?: error: ", ln)]
    assert lines, f"no 'fedloom: error:' line:\n{err}"
    needle = case.needle.replace("{tmp}", tmp.as_posix())
    assert needle in err, f"the error does not name {needle!r}:\n{err}"


def test_at_least_110_cases_with_unique_ids() -> None:
    assert len(CASES) >= 110
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(case: Bad, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # `demo` writes under ./runs
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FEDLOOM_PORT"):
        monkeypatch.delenv(var, raising=False)
    argv = prepare(case, tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    check(rc, capsys.readouterr().err, case, tmp_path)


# -- in their own process ------------------------------------------------------------------------
def fedloom(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedloom", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_subprocess_bad_value_is_one_line(tmp_path: Path) -> None:
    case = sets("train.lr=inf", needle="train.lr")
    proc = fedloom(*prepare(case, tmp_path))
    check(proc.returncode, proc.stderr, case, tmp_path)
    assert proc.stderr.strip().splitlines()[-1].startswith("fedloom: error: ")


def test_a_server_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        case = Bad("server:port-in-use", (*SERVER, "--address", address), address)
        proc = fedloom(*prepare(case, tmp_path))
    check(proc.returncode, proc.stderr, case, tmp_path)


# -- a client whose aggregator is not there ------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_aggregator_is_retried_with_rate_limited_logs(caplog) -> None:
    from conftest import make_tiny_task

    from fedloom.runtime.client import RuntimeClient, UnreachableError

    address = f"127.0.0.1:{closed_port()}"
    client = RuntimeClient(make_tiny_task(), address, 0, retry_for=3.0, backoff=(0.05, 0.2))
    client.log_every = 1.0
    with caplog.at_level("WARNING", logger="fedloom.client"), pytest.raises(UnreachableError) as e:
        client.run()
    message = str(e.value)
    assert "\n" not in message
    assert f"no aggregator at {address} after 3 s" in message and "UNAVAILABLE" in message
    retries = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert 2 <= len(retries) <= 5, retries  # about one a second, not one per backoff step
    assert all(address in m and "UNAVAILABLE" in m for m in retries)


def test_the_cli_client_gives_up_with_one_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    case = Bad("client:unreachable", (*CLIENT, "--server", address), f"no aggregator at {address}")
    proc = fedloom(*prepare(case, tmp_path), "--set", "runtime.retry_for=2")
    check(proc.returncode, proc.stderr, case, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"fedloom: error: client 0: no aggregator at {address} after")
    assert any("WARNING" in ln and "unavailable" in ln for ln in lines), proc.stderr
    assert len(lines) < 10, proc.stderr
