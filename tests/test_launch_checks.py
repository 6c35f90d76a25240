"""``fedloom launch`` says what it launches: it refuses a federation smaller than the config's
(unless asked), a script that is no deployment script, and clients it stops because the run
finished say "run finished", not "interrupted; continue with --resume"."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedloom import ConfigError
from fedloom.cli import main
from fedloom.deploy import launch

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FEDLOOM_PORT")


def config(out: Path, clients: int, per_round: int) -> dict[str, Any]:
    return {
        "name": "launched",
        "seed": 0,
        "rounds": 1,
        "data": {"dataset": "mnist5k", "num_clients": clients, "partition": "shards"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 50, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": per_round},
        "output": {
            "dir": out.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
    }


def write(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def test_fewer_client_processes_than_clients_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(config(tmp_path, clients=10, per_round=10), tmp_path / "ten.json")
    with pytest.raises(ConfigError, match="--allow-fewer-clients") as e:
        launch.launch(5, str(path))
    assert "10 clients (10 per round)" in str(e.value) and "4 client processes" in str(e.value)
    assert main(["launch", "--nproc", "5", str(path)]) == 2  # from the CLI: one error line
    err = capsys.readouterr().err
    assert "fedloom: error:" in err and "--allow-fewer-clients" in err
    assert not (tmp_path / "launched").exists()  # nothing was started


def test_allow_fewer_clients_runs_with_the_processes_there_are(tmp_path: Path) -> None:
    cfg = config(tmp_path, clients=4, per_round=4)
    out = io.StringIO()
    args = ("--set", "runtime.start_timeout=60")
    path = write(cfg, tmp_path / "four.json")
    assert launch.launch(3, str(path), args, out=out, allow_fewer_clients=True) == 0, out.getvalue()
    metrics = (tmp_path / "launched" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["clients"] for m in metrics] == [2]  # the 2 there were, not 4


def test_a_script_that_never_asks_for_its_role_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "simulate.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'a').write('x')\nimport fedloom\n")
    with pytest.raises(ConfigError, match="not a deployment script"):
        launch.launch(3, str(script))
    assert main(["launch", "--nproc", "3", str(script)]) == 2
    assert "not a deployment script" in capsys.readouterr().err
    assert not marker.exists()  # no copy of it was started


def test_clients_stopped_because_the_run_finished_say_run_finished(tmp_path: Path) -> None:
    """Real processes: an aggregator that finishes at once and a client that trains on,
    answering SIGINT as ``fedloom start`` does."""
    client = (
        "import sys, time\n"
        "print('client training', flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('fedloom: interrupted; continue with --resume', file=sys.stderr, flush=True)\n"
        "    sys.exit(130)\n"
    )
    aggregator = "import time; time.sleep(1.5); print('aggregator done', flush=True)"
    env = dict(os.environ)
    commands = [
        ("aggregator", [sys.executable, "-c", aggregator], env),
        ("client 0", [sys.executable, "-c", client], env),
    ]
    out = io.StringIO()
    assert launch._run_all(commands, 0.5, out) == 0
    lines = out.getvalue().splitlines()
    assert "[client 0] client training" in lines
    assert "[aggregator] aggregator done" in lines
    assert lines.count("[client 0] run finished") == 1, lines
    assert not any("--resume" in line or "interrupted" in line for line in lines), lines


def test_an_interrupted_client_is_not_told_to_resume(tmp_path: Path) -> None:
    """``fedloom start`` as a client (RANK 1, as under launch or torchrun) has no --resume."""
    path = write(config(tmp_path, clients=2, per_round=2), tmp_path / "c.json")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(RANK="1", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", FEDLOOM_PORT="1")
    cmd = [sys.executable, "-m", "fedloom", "start", str(path), "--set", "runtime.retry_for=60"]
    proc = subprocess.Popen(  # SIGINT at its default even under a background shell job
        cmd, env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    for line in proc.stderr:  # its first retry: it is up and waiting for the aggregator
        if "retry" in line.lower() or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "fedloom: interrupted" in err and "--resume" not in err, err
