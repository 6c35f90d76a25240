"""A live dashboard of a run: a read-only web page updated over server-sent events.

The run publishes into a bounded :class:`LiveState` (the round loop's
:class:`~fedloom.federation.live.LiveFeed`, the aggregator membership's watchers feeding a
:class:`ClientTable`); a :class:`DashboardServer` (standard library HTTP, no other
dependency) serves the page, its charts (hand-written SVG, no CDN: it works offline) and the
stream. ``fedloom run|server|launch ... --dashboard`` and ``fedloom dashboard runs/NAME``.
"""

from .access import Access, is_loopback, split_address
from .clients import ClientTable
from .rundir import RunDirFollower, load_run_dir, read_report
from .server import DashboardServer
from .state import Cursor, LiveState, jsonable
from .summary import config_summary, run_info, topology_graph

__all__ = [
    "Access",
    "ClientTable",
    "Cursor",
    "DashboardServer",
    "LiveState",
    "RunDirFollower",
    "config_summary",
    "is_loopback",
    "jsonable",
    "load_run_dir",
    "read_report",
    "run_info",
    "split_address",
    "topology_graph",
]
