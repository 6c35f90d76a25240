"""What a networked aggregator says at INFO: who checked in, what it waits for, each round.

A round-loop callback over the server's public state (``members``, ``rejections``), so the
runtime keeps its own per-event lines and the operator gets two lines per round (sent, and
closed) instead of silence between check-ins. :class:`RelayNames` makes the runtime's lines
about a relay read ``relay edge0``, not ``client 0``, which looks like a real client 0.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from ..federation import Callback, Federation, RoundState
from ..update import ClientUpdate

log = logging.getLogger("fedloom.server")

_SPEC = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")  # one %-format directive


class AggregatorLog(Callback):
    """Logs, per round: the members checked in and the clients sent the model (with what the
    round waits for), then the updates received, refused and missing.

    Args:
        server: the :class:`~fedloom.runtime.AggregatorServer` backend of the run.
        names: a name per client id where ids stand for something else (a root's relays).
        wait: what the round waits for, e.g. ``"up to 60 s"``; shown after the sent line.
    """

    def __init__(self, server: Any, names: Sequence[str] = (), wait: str = "") -> None:
        self.server, self.names, self.wait = server, list(names), wait
        self._received: list[int] = []
        self._failed: list[int] = []
        self._first = True

    def ids(self, ids: Collection[int]) -> str:
        """Ids as log text: sorted, at most 12, relay names where given."""
        shown = sorted(ids)
        # a relay's id names it; a negative id is no client (secure aggregation's one sum)
        text = [self.names[i] if 0 <= i < len(self.names) else str(i) for i in shown[:12]]
        return f"[{', '.join(text)}{', ...' if len(shown) > 12 else ''}]"

    def on_state(self, fed: Federation, state: RoundState, round: int) -> None:
        if state is RoundState.START_ROUND and self._first:
            self._first = False
            need = self.server.membership.min_clients
            log.info(
                "round %d: waiting for %d clients to check in (%d so far)",
                round,
                need,
                len(self.server.members),
            )
        elif state is RoundState.DISTRIBUTE:
            self._received, self._failed = [], []
            members, chosen = list(self.server.members), fed.plan.clients
            log.info(
                "round %d: %d clients checked in %s; the model goes to %d %s; waiting for "
                "their updates%s",
                round,
                len(members),
                self.ids(members),
                len(chosen),
                self.ids(chosen),
                f" ({self.wait})" if self.wait else "",
            )

    def on_update(self, fed: Federation, update: ClientUpdate, error: str | None) -> None:
        (self._failed if error else self._received).append(update.client_id)

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool:
        rnd = record["round"]
        if "skipped" in record:
            log.info("round %d skipped: %s", rnd, record["skipped"])
            return False
        refused = {cid for r, cid, _ in self.server.rejections if r == rnd} | set(self._failed)
        missing = set(fed.plan.clients) - set(self._received) - refused
        parts = [f"{len(self._received)} updates from {self.ids(self._received)}"]
        if refused:
            parts.append(f"refused {self.ids(refused)}")
        if missing:
            parts.append(f"missing {self.ids(missing)}")
        metric = ", ".join(f"{k} {fed.last_eval[k]:.4f}" for k in fed.last_eval if k in record)
        log.info("round %d closed: %s%s", rnd, "; ".join(parts), f"; {metric}" if metric else "")
        return False


class RelayNames(logging.Filter):
    """Rewrites ``client %d`` in a log record to ``relay <name>`` for the ids in ``names``."""

    def __init__(self, names: Mapping[int, str]) -> None:
        super().__init__()
        self.names = dict(names)

    def filter(self, record: logging.LogRecord) -> bool:
        msg, args = record.msg, record.args
        if not (isinstance(msg, str) and isinstance(args, tuple) and "client %d" in msg):
            return True
        at = msg.index("client %d") + len("client ")
        specs = [m for m in _SPEC.finditer(msg) if m.group() != "%%"]
        index = next((i for i, m in enumerate(specs) if m.start() == at), None)
        if index is None or index >= len(args):
            return True
        cid = args[index]
        if not isinstance(cid, int) or cid not in self.names:
            return True
        record.msg = msg[: at - len("client ")] + "relay %s" + msg[at + 2 :]
        record.args = (*args[:index], self.names[cid], *args[index + 1 :])
        return True


@contextlib.contextmanager
def relay_names(logger: str, names: Mapping[int, str]) -> Iterator[None]:
    """:class:`RelayNames` on ``logger`` (``fedloom.server``, ``fedloom.client``) while inside."""
    if not names:
        yield
        return
    target, f = logging.getLogger(logger), RelayNames(names)
    target.addFilter(f)
    try:
        yield
    finally:
        target.removeFilter(f)
