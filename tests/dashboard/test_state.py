"""The dashboard's state, clients table and feed, without a browser: bounded, never blocking
the run, and fed through the declared hooks (the loop's callbacks, the membership's watchers)."""

from __future__ import annotations

import math
import threading
import time

import pytest
from conftest import make_tiny_task

from fedloom import FedAvg, Federation
from fedloom.federation import Callback
from fedloom.federation.live import LiveFeed
from fedloom.observe.dashboard import ClientTable, Cursor, LiveState, jsonable, run_info
from fedloom.runtime.membership import Membership


def state(rounds: int = 5, **kw) -> LiveState:
    return LiveState(run_info({"name": "t", "rounds": rounds}, name="t", rounds=rounds), **kw)


def test_a_reader_gets_each_record_once_and_the_report_once() -> None:
    s, cursor = state(), Cursor()
    snap = s.snapshot(cursor)
    assert snap["records"] == [] and snap["status"]["phase"] == "waiting"
    s.started(0)
    s.record({"round": 1, "accuracy": 0.5})
    s.record({"round": 2, "accuracy": 0.6})
    first = s.delta(cursor)
    assert first is not None and [r["round"] for r in first["records"]] == [1, 2]
    assert first["status"]["round"] == 2 and first["status"]["eta_s"] >= 0
    assert "records" not in (s.delta(cursor) or {})
    s.finish({"stop_reason": "max_rounds"})
    end = s.delta(cursor)
    assert end is not None and end["report"] == {"stop_reason": "max_rounds"}
    assert end["status"]["phase"] == "finished" and "report" not in (s.delta(cursor) or {})


def test_the_history_is_a_ring_and_a_reader_behind_it_gets_a_snapshot() -> None:
    s, cursor = state(rounds=100, history_limit=10), Cursor()
    s.snapshot(cursor)
    for r in range(1, 51):
        s.record({"round": r})
    assert s.delta(cursor) is None  # fell behind the ring: a snapshot is due
    snap = s.snapshot(cursor)
    assert [r["round"] for r in snap["records"]] == list(range(41, 51)) and snap["first"] == 40
    s.record({"round": 51})
    assert [r["round"] for r in s.delta(cursor)["records"]] == [51]


def test_records_become_strict_json() -> None:
    clean = jsonable({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": object}, "e": True})
    assert clean["a"] is None and clean["b"] == [None, 1.5] and clean["e"] is True
    assert clean["c"]["d"] == str(object)


def test_wait_wakes_on_a_change_and_times_out_without_one() -> None:
    s, cursor = state(), Cursor()
    s.snapshot(cursor)
    t0 = time.monotonic()
    assert s.wait(cursor, 0.2) is False and time.monotonic() - t0 >= 0.15
    threading.Timer(0.05, lambda: s.state("train", 1)).start()
    assert s.wait(cursor, 5) is True
    s.close()
    assert s.wait(cursor, 5) is False and s.closed


def test_publishing_without_readers_is_cheap_and_bounded() -> None:
    """What the loop pays per event when nobody watches: a lock and a counter."""
    s = state(rounds=10**6, history_limit=50)
    s.started(0)
    t0 = time.perf_counter()
    for r in range(1, 2001):
        s.state("train", r)
        s.client_done()
        s.record({"round": r, "accuracy": 0.5, "nodes": {"edge0": {"accuracy": 0.4}}})
    per_round = (time.perf_counter() - t0) / 2000
    assert len(s.snapshot()["records"]) == 50
    assert per_round < 2e-3, f"{per_round * 1e6:.0f} us per round"


def membership(heartbeat_timeout: float = 0.05) -> Membership:
    return Membership(
        threading.Condition(),
        min_clients=1,
        start_timeout=None,
        quorum=1,
        heartbeat_timeout=heartbeat_timeout,
        round_timeout=None,
        poll_interval=0.01,
        on_drop=lambda cid: None,
    )


def test_the_clients_table_watches_the_membership_hook() -> None:
    """Check-ins and drops reach the table through Membership.watchers; heartbeat ages are
    read from Membership.heartbeats; the round's clients move training -> uploaded/missed."""
    m = membership()
    table = ClientTable(m.heartbeats, names=["edge0", "edge1", "edge2"])
    s = state(clients=table)
    m.watchers.append(table)
    with m.cv:
        for cid in (0, 1, 2):
            m.check_in(cid, num_samples=10, round=0)
    cursor = Cursor()
    rows = s.snapshot(cursor)["clients"]
    assert [(r["id"], r["name"], r["state"]) for r in rows] == [
        (0, "edge0", "joined"), (1, "edge1", "joined"), (2, "edge2", "joined")
    ]  # fmt: skip
    assert all(r["heartbeat_s"] is not None and r["heartbeat_s"] >= 0 for r in rows)
    table.planned([0, 1, 2])
    table.reported(0, 1000, rejected=False)
    table.reported(1, 0, rejected=True)
    time.sleep(0.1)
    with m.cv:
        m.touch(0)
        m.touch(1)
        m.drop_silent()  # client 2 was silent for longer than 0.05 s
    table.round_closed()
    by_id = {r["id"]: r for r in table.rows()}
    assert by_id[0]["state"] == "idle" and by_id[0]["rounds"] == 1 and by_id[0]["bytes"] == 1000
    assert by_id[1]["rejected"] == 1 and by_id[1]["rounds"] == 0
    assert by_id[2]["state"] == "dropped" and by_id[2]["heartbeat_s"] is None
    sent = s.delta(cursor, clients_every=0.0)["clients"]
    assert [r["state"] for r in sent] == ["idle", "idle", "dropped"]
    with m.cv:
        m.check_in(2, num_samples=10, round=1)
    assert {r["id"]: r for r in table.rows()}[2]["state"] == "joined"


def test_a_missed_round_is_marked() -> None:
    table = ClientTable()
    table.checked_in(0)
    table.checked_in(1)
    table.planned([0, 1])
    table.reported(0, 10, rejected=False)
    table.round_closed()
    assert [r["state"] for r in table.rows()] == ["idle", "missed"]


class Boom(Callback):
    def on_round_end(self, fed, record):
        if record["round"] == 2:
            raise RuntimeError("boom")


def test_the_feed_publishes_the_loop_and_its_failure(tiny_task) -> None:
    s = state(rounds=3)
    fed = Federation(tiny_task, FedAvg(clients_per_round=2), rounds=3, seed=0)
    fed.callbacks += [LiveFeed(s), Boom()]
    with pytest.raises(RuntimeError, match="boom"):
        fed.run()
    snap = s.snapshot()
    assert [r["round"] for r in snap["records"]] == [1, 2]
    assert snap["records"][0]["accuracy"] == fed.history[0]["accuracy"]
    assert snap["status"]["phase"] == "failed" and "boom" in snap["status"]["error"]
    assert snap["status"]["planned"] == 2 and snap["status"]["done"] == 2


def test_the_feed_reports_a_finished_run() -> None:
    s = state(rounds=2)
    fed = Federation(make_tiny_task(), FedAvg(clients_per_round=2), rounds=2, seed=0)
    fed.callbacks.append(LiveFeed(s))
    result = fed.run()
    snap = s.snapshot()
    assert snap["status"]["phase"] == "finished" and snap["status"]["state"] == "finish"
    assert snap["report"]["stop_reason"] == "max_rounds"
    assert snap["report"]["final_metrics"] == pytest.approx(result.final_metrics)


def test_a_hierarchy_run_publishes_its_graph_and_node_metrics(tmp_path) -> None:
    """examples/hierarchy.toml, shortened: the page gets the topology (5 nodes, 4 edges) and
    each round's per-node metrics (the NodeMetrics callback runs before the feed)."""
    from fedloom.compose.dashboard import open_dashboard
    from fedloom.experiment import Experiment

    sets = ["rounds=2", "model.name='logreg'", "train.local_epochs=1", "topology.edge_rounds=1",
            f"output.dir='{tmp_path.as_posix()}'", "output.progress=false",
            "output.figures=false", "output.tensorboard=false"]  # fmt: skip
    exp = Experiment.from_config("examples/hierarchy.toml", sets)
    page = open_dashboard(exp.config, exp.federation, "127.0.0.1:0", announce=False)
    try:
        exp.run()
    finally:
        page.stop()
    snap = page.state.snapshot()
    topology = snap["run"]["topology"]
    assert [n["name"] for n in topology["nodes"]] == ["root", "edge0", "edge1", "edge2", "edge3"]
    assert sorted(topology["edges"]) == [[f"edge{i}", "root"] for i in range(4)]
    assert [n["clients"] for n in topology["nodes"]] == [0, 10, 10, 10, 10]
    assert set(snap["records"][-1]["nodes"]) >= {"edge0", "edge1", "edge2", "edge3"}
    assert snap["status"]["phase"] == "finished"
