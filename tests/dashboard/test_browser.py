"""The dashboard in a real browser (headless Chromium driven by Selenium): a live run's page
loads, its round counter and charts advance as rounds finish, a killed client of a deployment
shows as dropped, the final report appears, and the console stays free of errors. The checker
itself fails when the page stops updating (its stream cut)."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import pytest
from conftest import run_overrides
from runtime.conftest import base_config, free_port, wait_until, with_changes, write_config

from fedloom.compose.dashboard import open_dashboard
from fedloom.experiment import Experiment
from fedloom.observe.dashboard import DashboardServer, LiveState, run_info

from .browser import Page, PageStalled, chromium
from .conftest import RoundGate, save_screenshot

ROUNDS = 4


def test_a_live_run_advances_round_by_round_in_chromium(tmp_path: Path, gate: RoundGate) -> None:
    """A simulation held at the end of each round: the page shows each round as it closes
    (counter and a point more on each chart), then the finished run and its report."""
    sets = run_overrides(tmp_path, "live", rounds=ROUNDS, **{"output.figures": False,
                         "output.tensorboard": False})  # fmt: skip
    exp = Experiment.from_config(None, sets)
    page_server = open_dashboard(
        exp.config, exp.federation, "127.0.0.1:0", run_dir=exp.run_dir, announce=False
    )
    exp.federation.callbacks.append(gate)  # after the feed: the page has the round first
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(exp, errors), daemon=True)
    runner.start()
    try:
        with chromium() as driver:
            driver.get(page_server.url)
            page = Page(driver)
            page.wait("the run's name", lambda: page.text("run-name").startswith("live"), 20)
            assert "strategy.name" in page.text("config") and "fedavg" in page.text("config")
            for rnd in range(1, ROUNDS + 1):
                page.wait_round(rnd)
                assert page.round() == rnd  # held there: the counter shows exactly this round
                for metric in ("accuracy", "loss", "bytes", "seconds"):
                    page.wait(
                        f"{metric} point {rnd}",
                        lambda m=metric, n=rnd: page.chart_points(m) == n,
                        10,
                    )
                assert page.text("rounds-total") == str(ROUNDS)
                gate.step()
            page.wait("the finished phase", lambda: page.text("phase") == "finished", 30)
            page.wait("the report", lambda: "accuracy" in page.text("report"), 10)
            page.wait("the stream's end", lambda: page.text("conn") == "run over", 10)
            save_screenshot(driver, tmp_path / "dashboard-simulation.png")
            assert page.console_errors() == []
    finally:
        gate.open()
        runner.join(60)
        page_server.stop()
    assert not errors, errors


def _run(exp: Experiment, errors: list[BaseException]) -> None:
    try:
        exp.run()
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_a_killed_client_shows_as_dropped(tmp_path: Path, procs) -> None:
    """``fedloom server --dashboard`` with three ``fedloom client`` processes; client 2 trains
    slowly and is SIGKILLed in round 1: its row turns ``dropped`` (heartbeat_timeout 1.5 s),
    the other two finish the run, and the page ends on the report without console errors."""
    address = f"127.0.0.1:{free_port()}"
    runtime = {"address": address, "min_clients": 3, "quorum": 1, "heartbeat_timeout": 1.5}
    cfg = base_config(tmp_path / "net", "deployed", **runtime)
    cfg = with_changes(cfg, rounds=5, **{"data.num_clients": 3, "strategy.clients_per_round": 3})
    config = write_config(tmp_path / "deployed.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--dashboard", "127.0.0.1:0")
    url = wait_until(lambda: _dashboard_url(server.output()), 120, "the dashboard's URL")
    slow = ["--set", "train.local_epochs=5000"]  # client 2 is still training when killed
    clients = {
        i: procs.fedloom(
            f"client {i}", "client", str(config), "--server", address, "--client-id", str(i),
            *(slow if i == 2 else []),
        )
        for i in range(3)
    }  # fmt: skip
    with chromium() as driver:
        driver.get(url)
        page = Page(driver)
        page.wait("three clients", lambda: all(page.client_state(i) for i in range(3)), 120)
        page.wait("client 2 training", lambda: page.client_state(2) == "training", 60)
        both = lambda: {page.client_state(0), page.client_state(1)} == {"uploaded"}  # noqa: E731
        page.wait("clients 0, 1 uploaded", both, 60)
        assert page.round() == 0
        clients[2].popen.send_signal(signal.SIGKILL)
        page.wait("client 2 dropped", lambda: page.client_state(2) == "dropped", 30)
        page.wait_round(1, timeout=30)
        page.wait_round(5, timeout=60)
        page.wait("the finished phase", lambda: page.text("phase") == "finished", 30)
        assert page.client_state(2) == "dropped"
        assert "2 connected, 1 dropped" in page.text("clients-count")
        page.wait("the report", lambda: "accuracy" in page.text("report"), 10)
        page.wait("the stream's end", lambda: page.text("conn") == "run over", 10)
        save_screenshot(driver, tmp_path / "dashboard-deployment.png")
        assert page.console_errors() == []
    assert server.wait(60) == 0, procs.logs()


def _dashboard_url(output: str) -> str | None:
    found = re.search(r"dashboard at (http://\S+)", output)
    return found.group(1) if found else None


def test_the_checker_fails_when_the_page_stops_updating(tmp_path: Path) -> None:
    """The same checks on a page whose event stream is cut (the server stopped): round 1
    shows, round 2 is published but never arrives, and the checker raises PageStalled."""
    state = LiveState(run_info({"name": "cut"}, name="cut", rounds=3))
    state.started(0)
    state.record({"round": 1, "accuracy": 0.5})
    server = DashboardServer(state).start()
    with chromium() as driver:
        driver.get(server.url)
        page = Page(driver)
        page.wait_round(1)
        assert page.chart_points("accuracy") == 1
        server.stop()  # the stream is cut; the page cannot reconnect
        state.record({"round": 2, "accuracy": 0.6})
        with pytest.raises(PageStalled, match="stopped updating: no round 2"):
            page.wait_round(2, timeout=3)
        with pytest.raises(PageStalled):
            page.wait("a second accuracy point", lambda: page.chart_points("accuracy") == 2, 1)
        lost = ("reconnecting", "disconnected")
        page.wait("the lost connection badge", lambda: page.text("conn") in lost, 10)


def test_the_topology_graph_and_the_privacy_chart(tmp_path: Path) -> None:
    """A root over two relays in a deployment: relay edge1 dropped, edge0 training; each node
    of the graph says so, with its metrics in its tooltip. The round's epsilon (central DP
    records it) gets its chart."""
    from fedloom.observe.dashboard import ClientTable

    section = {
        "nodes": [{"name": "root"}, {"name": "edge0", "clients": "0-4"},
                  {"name": "edge1", "clients": "5-9"}],
        "edges": [["edge0", "root"], ["edge1", "root"]],
    }  # fmt: skip
    table = ClientTable(names=["edge0", "edge1"])
    info = run_info({"name": "tree", "topology": section}, name="tree", rounds=4,
                    deployment=True, relays=["edge0", "edge1"])  # fmt: skip
    state = LiveState(info, clients=table)
    state.started(0)
    table.checked_in(0)
    table.checked_in(1)
    state.record({"round": 1, "accuracy": 0.5, "epsilon": 0.8,
                  "nodes": {"edge0": {"accuracy": 0.61}}})  # fmt: skip
    state.state("train", 2)
    table.planned([0, 1])
    table.dropped(1)
    with DashboardServer(state) as server, chromium() as driver:
        driver.get(server.url)
        page = Page(driver)
        status = "return document.querySelector('g[data-node=\"{}\"]')?.dataset.status"
        page.wait("the graph", lambda: page.js(status.format("edge1")) == "dropped", 20)
        assert page.js(status.format("edge0")) == "training"
        assert page.js(status.format("root")) == "training"
        tip = page.js("return document.querySelector('g[data-node=\"edge0\"] title').textContent")
        assert "accuracy 0.61" in tip
        assert page.chart_points("epsilon") == 1
        assert "epsilon 0.8" in page.text("chart-grid")
        assert page.console_errors() == []


@pytest.mark.parametrize(
    "ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_browser_is_skipped_only_outside_ci(monkeypatch, ci, outcome) -> None:
    """Without Chromium the browser tests skip here, but CI=true makes them fail."""
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(outcome, match=r"chromium|selenium"), chromium():
        pass
