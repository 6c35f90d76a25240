"""``--dashboard``: a live page of a run, composed from its config, round loop and (in a
deployment) the aggregator's membership, which it watches through its declared hook.

The page is served from this process (the aggregator's, in a deployment) on loopback by
default; another address needs a token (``FEDLOOM_DASHBOARD_TOKEN``, or one is made and
shown in the URL) and is served over HTTPS when the run has ``runtime.tls_cert``/``tls_key``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import ConfigError
from ..federation import Federation
from ..federation.live import LiveFeed
from ..observe.dashboard import (
    Access,
    ClientTable,
    DashboardServer,
    LiveState,
    run_info,
    split_address,
)

if TYPE_CHECKING:
    from ..runtime.membership import Membership

log = logging.getLogger("fedloom.dashboard")

DEFAULT_ADDRESS = "127.0.0.1:8765"
TOKEN_ENV = "FEDLOOM_DASHBOARD_TOKEN"


def open_dashboard(
    cfg: Config,
    fed: Federation,
    address: str = DEFAULT_ADDRESS,
    *,
    membership: Membership | None = None,
    relays: Sequence[str] = (),
    run_dir: Path | None = None,
    announce: bool = True,
) -> DashboardServer:
    """Start the page of ``fed``'s run at ``address`` and feed it (a callback appended to
    ``fed``); ``membership`` (a deployment's aggregator) fills the clients table."""
    try:
        host, port = split_address(address)
    except ValueError as e:
        raise ConfigError(f"--dashboard: {e}") from None
    clients = None
    if membership is not None:
        clients = ClientTable(membership.heartbeats, relays)
        with membership.cv:  # those already in, then every later check-in and drop
            for cid in sorted(membership.members):
                clients.checked_in(cid)
            membership.watchers.append(clients)
    info = run_info(
        cfg.effective(),
        name=cfg.name,
        rounds=cfg.rounds,
        deployment=membership is not None,
        relays=relays,
    )
    state = LiveState(info, clients=clients)
    for record in fed.history:  # a resumed run's earlier rounds
        state.record(record)
    fed.callbacks.append(LiveFeed(state, run_dir))
    rt = cfg.runtime
    access = Access.for_address(host, os.environ.get(TOKEN_ENV), rt.tls_cert, rt.tls_key)
    try:
        server = DashboardServer(state, port, access=access).start()
    except OSError as e:
        raise ConfigError(f"--dashboard {address}: cannot listen there: {e}") from e
    if announce:
        print(f"fedloom: dashboard at {server.url}", file=sys.stderr, flush=True)
    else:
        log.info("dashboard at %s", server.url)
    return server
