"""The aggregator says what it is doing at INFO: who checked in, whom it waits for, what came
back, two lines a round; and a relay is logged by its name, never as a client id."""

from __future__ import annotations

import logging
import re

from fedloom.deploy.aggregator_log import RelayNames
from fedloom.deploy.roles import run_client, run_server

from .conftest import base_config, free_port, with_changes


def test_the_aggregator_logs_each_round_at_info(tmp_path, client_threads, caplog) -> None:
    cfg = with_changes(base_config(tmp_path / "net", "told", min_clients=4), rounds=2)
    address = f"127.0.0.1:{free_port()}"

    class Runner:
        def __init__(self, cid: int) -> None:
            self.client_id = cid

        def run(self) -> int:
            return run_client(cfg, server=address, client_id=self.client_id)

    with caplog.at_level(logging.INFO, logger="fedloom"):
        for cid in range(4):
            client_threads.start(Runner(cid))
        result = run_server(cfg, address=address, linger=0.5)
        client_threads.join(60)
    assert result.rounds == 2 and not client_threads.errors
    ours = [r.getMessage() for r in caplog.records if r.module == "aggregator_log"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.module == "aggregator_log")
    assert re.fullmatch(r"round 1: waiting for 4 clients to check in \(\d so far\)", ours[0]), ours
    for rnd in (1, 2):
        sent = [m for m in ours if m.startswith(f"round {rnd}: 4 clients checked in")]
        closed = [m for m in ours if m.startswith(f"round {rnd} closed: 3 updates from [")]
        assert len(sent) == 1 and len(closed) == 1, ours
        assert "[0, 1, 2, 3]; the model goes to 3 [" in sent[0], sent
        assert "waiting for their updates (quorum 1, at most 600 s)" in sent[0], sent
        assert "accuracy" in closed[0], closed
    assert len(ours) == 5, ours  # the wait, then sent + closed per round: no flood


def test_relay_ids_are_logged_by_name(caplog) -> None:
    logger = logging.getLogger("fedloom.server")
    names = RelayNames({0: "edge0", 1: "edge1"})
    logger.addFilter(names)
    try:
        with caplog.at_level(logging.INFO, logger="fedloom.server"):
            logger.info("client %d checked in (%d members)", 0, 1)
            logger.warning("round %d: rejected update of client %d: %s", 3, 1, "bad norm")
            logger.info("client %d checked in (%d members)", 7, 2)  # not a relay
            logger.info("100%% of %d clients: client %d is late", 5, 0)
    finally:
        logger.removeFilter(names)
    assert [r.getMessage() for r in caplog.records] == [
        "relay edge0 checked in (1 members)",
        "round 3: rejected update of relay edge1: bad norm",
        "client 7 checked in (2 members)",
        "100% of 5 clients: relay edge0 is late",
    ]
