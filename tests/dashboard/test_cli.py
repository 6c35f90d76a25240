"""``--dashboard`` on the commands that run a federation, ``fedloom dashboard RUN_DIR`` on a
finished (or still written) run directory, and what each refuses."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from conftest import run_overrides
from runtime.conftest import base_config, wait_until, with_changes, write_config

from fedloom.cli import main
from fedloom.observe.dashboard import RunDirFollower, load_run_dir


def sets(tmp_path: Path, name: str, **extra) -> list[str]:
    """A config file and ``--set``s for a quick mnist5k run under ``tmp_path``."""
    config = tmp_path / f"{name}.json"
    config.write_text("{}")
    out = run_overrides(tmp_path, name, **{"output.figures": False, **extra})
    return [str(config), *(a for s in out for a in ("--set", s))]


def test_run_with_a_dashboard_serves_it_during_the_run(tmp_path: Path, capsys) -> None:
    assert main(["run", *sets(tmp_path, "cli"), "--dashboard", "127.0.0.1:0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"fedloom: dashboard at http://127\.0\.0\.1:\d+/\n", err), err


def test_the_dashboard_of_a_finished_run_directory(tmp_path: Path, procs) -> None:
    assert main(["run", *sets(tmp_path, "done", rounds=3)]) == 0
    run_dir = tmp_path / "done"
    state = load_run_dir(run_dir).snapshot()
    assert [r["round"] for r in state["records"]] == [1, 2, 3]
    assert state["status"]["phase"] == "finished" and state["run"]["mode"] == "replay"
    assert "# Run report: done" in state["report"]["markdown"]
    assert state["report"]["run_name"] == "done" and state["report"]["rounds"] == 3
    page = procs.fedloom("dashboard", "dashboard", str(run_dir), "--address", "127.0.0.1:0")
    url = wait_until(lambda: re.search(r"at (http://\S+)", page.output()), 60, "the URL")[1]
    served = json.loads(urllib.request.urlopen(url + "api/state", timeout=10).read())
    assert served["records"] == state["records"] and served["report"] == state["report"]
    page.popen.send_signal(signal.SIGINT)
    assert page.wait(60) == 0  # a loaded CI machine can take a while to stop


def test_no_secret_of_the_config_reaches_the_page(tmp_path: Path) -> None:
    """report.json and report.md hold the whole config (tokens too): the page gets neither
    copy, and its config summary names no token, key, URL or path."""
    config = {
        "name": "s", "rounds": 1, "data": {"dataset": "mnist5k", "root": "/home/me/data"},
        "notify": {"telegram_token": "TG-SECRET", "webhook_url": "https://hook/SECRET"},
        "runtime": {"tokens": {"0": "TOK-SECRET"}, "tls_key": "/k.pem", "quorum": 2},
        "privacy": {"noise_multiplier": 1.0, "secret_seed": "SECRET"},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "report.json").write_text(json.dumps({"rounds": 1, "config": config}))
    (tmp_path / "report.md").write_text(
        "# Run report: s\n\n| Rounds | 1 |\n\n## Configuration\n\n| notify.telegram_token | "
        "TG-SECRET |\n"
    )
    text = json.dumps(load_run_dir(tmp_path).snapshot())
    assert "SECRET" not in text and "/home/me" not in text and "/k.pem" not in text
    assert "Run report: s" in text and '["privacy.noise_multiplier", 1.0]' in text


def test_a_run_directory_being_written_is_followed(tmp_path: Path) -> None:
    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"name": "partial", "rounds": 3}))
    (d / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')
    state = load_run_dir(d)
    follower = RunDirFollower(state, d)
    assert state.snapshot()["status"]["phase"] == "running"
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"round": 2, "accuracy": 0.6}\n{"round": 3, "acc')  # a torn last line
    assert follower.poll() is False
    assert [r["round"] for r in state.snapshot()["records"]] == [1, 2]
    with (d / "metrics.jsonl").open("a") as f:
        f.write('uracy": 0.7}\n')
    (d / "report.json").write_text(json.dumps({"run": "partial", "rounds": 3}))
    assert follower.poll() is True
    snap = state.snapshot()
    assert [r["round"] for r in snap["records"]] == [1, 2, 3]
    assert snap["status"]["phase"] == "finished" and snap["report"]["rounds"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dashboard", "{tmp}"], "is not a run directory"),
        (["run", "{cfg}", "--dashboard", "nohost"], "is not host:port"),
        (["start", "{cfg}", "--role", "client", "--client-id", "0", "--dashboard"],
         "the aggregator serves"),
        (["launch", "--nproc", "2", "--dashboard", "127.0.0.1:0", "{script}"], "a script"),
    ],
    ids=["not-a-run-dir", "bad-address", "client", "launch-script"],
)
def test_refusals_are_one_line(argv, message, tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path / "c.json", base_config(tmp_path))
    script = tmp_path / "s.py"
    script.write_text("from fedloom.deploy.roles import role_from_env\n")
    values = {"tmp": str(tmp_path), "cfg": str(cfg), "script": str(script)}
    try:
        code = main([a.format(**values) for a in argv])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_launch_gives_the_dashboard_to_the_aggregator_only(tmp_path: Path, capsys) -> None:
    """1 aggregator + 2 clients; a client given --dashboard would refuse to start."""
    cfg = with_changes(base_config(tmp_path / "out", "launched"), rounds=2,
                       **{"data.num_clients": 2, "strategy.clients_per_round": 2})  # fmt: skip
    config = write_config(tmp_path / "launched.json", cfg)
    code = main(["launch", "--nproc", "3", "--dashboard", "127.0.0.1:0", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"\[aggregator\] fedloom: dashboard at http://127\.0\.0\.1:\d+/", out), out
    assert "the aggregator serves" not in out
