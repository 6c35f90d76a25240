"""Tests for fedloom.observe: metrics log, TensorBoard, plots, progress, notifiers, report."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from fedloom.observe import (
    MetricsLog,
    NotifyError,
    Progress,
    TelegramNotifier,
    TensorBoardLog,
    WebhookNotifier,
    notify_all,
    plot_curves,
    read_metrics,
    scalar_tag,
    summarize,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(n: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in range(1, n + 1):
        rec: dict[str, Any] = {
            "round": r,
            "train_loss": 1.0 / r,
            "clients": 10,
            "bytes_up": 100 * r,
            "bytes_down": 200,
            "seconds": 0.5,
        }
        if r % 2 == 0 or r == n:
            rec.update(accuracy=0.5 + r / 100, test_loss=0.9 / r)
        out.append(rec)
    out[3]["accuracy"] = 0.99  # round 4 is the best, round n the final
    return out


# --- metrics -----------------------------------------------------------------------------


def test_metrics_append_read_and_truncate(tmp_path) -> None:
    log = MetricsLog(tmp_path)  # a directory means <dir>/metrics.jsonl
    assert log.path == tmp_path / "metrics.jsonl"
    for rec in _records(5):
        log.append(rec)
    # Flushed per line: readable while the log is still open.
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert log.truncate_after(3) == 3
    log.append({"round": 4, "train_loss": 0.1})
    log.close()
    recs = read_metrics(log.path)
    assert [r["round"] for r in recs] == [1, 2, 3, 4]
    assert recs[:3] == _records(5)[:3] and recs[3] == {"round": 4, "train_loss": 0.1}
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_metrics_torn_last_line_and_numpy_values(tmp_path) -> None:
    np = pytest.importorskip("numpy")
    with MetricsLog(tmp_path / "m.jsonl") as log:
        log.append({"round": 1, "accuracy": np.float32(0.5), "note": object})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"round": 2, "acc')  # killed mid-write
    recs = read_metrics(tmp_path / "m.jsonl")
    assert recs[0]["accuracy"] == 0.5 and isinstance(recs[0]["note"], str) and len(recs) == 1
    with MetricsLog(tmp_path / "m.jsonl") as log:  # the resumed writer drops the torn line
        log.append({"round": 2})
    assert [r["round"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 2]


# --- tensorboard -------------------------------------------------------------------------


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_scalar_tags() -> None:
    assert scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("accuracy") == "eval/accuracy"
    assert scalar_tag("test_loss") == "eval/loss"
    assert scalar_tag("bytes_up") == "comm/bytes_up"
    assert scalar_tag("custom/x") == "custom/x" and scalar_tag("lr") == "metrics/lr"


def test_tensorboard_writes_scalars_and_purges_on_resume(tmp_path) -> None:
    with TensorBoardLog(tmp_path) as tb:
        for rec in _records(4):
            tags = tb.log({**rec, "name": "run-a", "flags": [1, 2], "ok": True})
        assert "metrics/name" not in tags and "metrics/ok" not in tags
    first = _scalars(tmp_path)
    assert first["train/loss"] == [(r, pytest.approx(1.0 / r)) for r in (1, 2, 3, 4)]
    assert [s for s, _ in first["eval/accuracy"]] == [2, 4]
    assert "round/round" not in first and "metrics/round" not in first
    # Resume from a checkpoint of round 2: rounds 3-4 are re-run with other values.
    with TensorBoardLog(tmp_path, purge_step=3) as tb:
        for r in (3, 4):
            tb.log({"round": r, "train_loss": 10.0 + r})
    assert _scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]
    with pytest.raises(ValueError, match="round"), TensorBoardLog(tmp_path / "x") as tb:
        tb.log({"accuracy": 0.5})


# --- plots -------------------------------------------------------------------------------


def test_plots_write_pngs_and_skip_absent(tmp_path) -> None:
    paths = plot_curves(_records(5), tmp_path / "plots", title="run-a")
    assert [p.name for p in paths] == ["accuracy.png", "loss.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000
    no_eval = [{"round": r, "train_loss": 1.0 / r} for r in (1, 2, 3)]
    assert [p.name for p in plot_curves(no_eval, tmp_path / "b")] == ["loss.png"]
    assert plot_curves([{"round": 1, "clients": 3}], tmp_path / "c") == []
    assert not (tmp_path / "c").exists()


# --- progress ----------------------------------------------------------------------------


def _drive(p: Progress) -> None:
    with p:
        p.resume_at(1)
        for r in (2, 3):
            p.start_round(r, 4)
            for _ in range(4):
                p.client_done()
            p.end_round({"round": r, "train_loss": 0.25, **({"accuracy": 0.875} if r == 2 else {})})


def test_progress_disabled_is_silent(capsys) -> None:
    _drive(Progress(3, 4, enabled=False))
    _drive(Progress(3, 4))  # not a TTY under pytest: disabled by default
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_progress_enabled_renders_rounds(capsys) -> None:
    from rich.console import Console

    buf = io.StringIO()
    p = Progress(3, 4, enabled=True, console=Console(file=buf, force_terminal=True, width=120))
    _drive(p)
    text = buf.getvalue()
    assert "3/3" in text and "acc 0.8750" in text and "loss 0.2500" in text
    p.close()  # idempotent
    assert capsys.readouterr().err == ""


# --- notifiers ---------------------------------------------------------------------------


@pytest.fixture
def server(http_server):
    """The shared recording HTTP server of tests/conftest.py (proxies cleared)."""
    return http_server


def test_webhook_posts_json(server) -> None:
    WebhookNotifier(server.url + "/hook", headers={"X-Key": "k"}).send(
        "run done", "acc 0.9", event="finished"
    )
    assert server.requests == [
        ("/hook", {"title": "run done", "text": "acc 0.9", "event": "finished"})
    ]
    server.status = 500
    with pytest.raises(NotifyError, match="HTTP 500") as err:
        WebhookNotifier(server.url + "/secret-path").send("t", "x")
    assert "secret-path" not in str(err.value)
    with pytest.raises(NotifyError, match="http"):
        WebhookNotifier("file:///etc/passwd").send("t", "x")


def test_telegram_send_path_and_errors(server) -> None:
    token = "123:SECRET"
    tg = TelegramNotifier(token, 42, api_base=server.url, timeout=5)
    tg.send("fedloom", "run finished")
    assert server.requests == [
        (f"/bot{token}/sendMessage", {"chat_id": 42, "text": "fedloom\n\nrun finished"})
    ]
    assert token not in repr(tg)
    server.reply = {"ok": False, "description": "Bad Request: chat not found"}
    with pytest.raises(NotifyError, match="chat not found"):
        tg.send("t", "x")
    server.status = 500
    with pytest.raises(NotifyError, match="HTTP 500") as err:
        tg.send("t", "x")
    assert token not in str(err.value)


def test_telegram_through_http_proxy(server) -> None:
    # The local server plays the proxy: it receives the absolute target URL as the path.
    tg = TelegramNotifier("7:T", "@chan", api_base="http://telegram.invalid", proxy=server.url)
    tg.send("", "hi")
    assert server.requests == [
        ("http://telegram.invalid/bot7:T/sendMessage", {"chat_id": "@chan", "text": "hi"})
    ]


def test_notify_all_swallows_and_logs(server, caplog) -> None:
    token = "999:TOPSECRET"
    server.reply = {"ok": False, "description": "Unauthorized"}
    good = WebhookNotifier(server.url + "/hook")
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        sent = notify_all(
            [TelegramNotifier(token, 1, api_base=server.url), good], "t", "x", event="failed"
        )
    assert sent == 1 and server.requests[-1] == (
        "/hook",
        {"title": "t", "text": "x", "event": "failed"},
    )
    assert "Unauthorized" in caplog.text and token not in caplog.text


# --- report ------------------------------------------------------------------------------


def test_report_numbers(tmp_path) -> None:
    summary = summarize(
        _records(5),
        run_name="mnist-fedavg",
        config={"lr": 0.1, "strategy": {"name": "fedavg", "clients": 10}},
    )
    assert summary["rounds"] == 5
    assert (summary["final_accuracy"], summary["final_accuracy_round"]) == (0.55, 5)
    assert (summary["best_accuracy"], summary["best_accuracy_round"]) == (0.99, 4)
    assert summary["bytes_up"] == 1500 and summary["bytes_down"] == 1000
    assert summary["wall_time_s"] == 2.5
    json_path, md_path = write_report(tmp_path, {**summary, "stop_reason": "max_rounds"})
    data = json.loads(json_path.read_text())
    assert data["best_accuracy"] == 0.99 and data["config"]["strategy"]["name"] == "fedavg"
    md = md_path.read_text()
    assert md.startswith("# Run report: mnist-fedavg")
    for needle in (
        "| Rounds | 5 |",
        "| Final accuracy | 0.5500 (round 5) |",
        "| Best accuracy | 0.9900 (round 4) |",
        "| Bytes up | 1.46 KiB (1,500 B) |",
        "| Wall time | 2.5s |",
        "| strategy.name | fedavg |",
        "| stop_reason | max_rounds |",
    ):
        assert needle in md, needle
