"""All parties of a SecAgg+ round in one process, with a dropout schedule.

Messages go from party to party exactly as a transport would carry them; ``transit`` (a
test's hook) may alter or drop any of them on the way. A client that drops out stops
answering after the named stage; a client whose message is refused drops out the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from . import prg
from .client import SecAggClient
from .config import SecAggConfig
from .errors import SecAggRefused
from .messages import ClientMessage, ServerMessage
from .server import AggregateResult, SecAggServer

# the transit hook may hand a client a message of the wrong type: the client refuses it
Act = Callable[[SecAggClient, ClientMessage | ServerMessage], ClientMessage]
Transit = Callable[[ClientMessage | ServerMessage], ClientMessage | ServerMessage | None]


@dataclass(frozen=True)
class Dropouts:
    """Who stops answering, named by the last message each one sent."""

    before_advertise: frozenset[int] = frozenset()
    after_advertise: frozenset[int] = frozenset()
    after_share_keys: frozenset[int] = frozenset()
    after_masked_input: frozenset[int] = frozenset()  # their input counts, their shares do not


@dataclass
class SimulatedRound:
    """The parties of one round, kept so a caller can read what each one counted."""

    server: SecAggServer
    clients: list[SecAggClient]
    result: AggregateResult | None = None
    client_refusals: list[SecAggRefused] = field(default_factory=list)


def client_seed(seed: bytes, round: int, client: int) -> bytes:
    """The per-round, per-client secret seed a simulation derives from its run seed."""
    return prg.derive(seed, f"secagg round {round} client {client}")


def simulate_round(
    config: SecAggConfig,
    updates: Sequence[NDArray[np.floating]],
    seed: bytes,
    dropouts: Dropouts = Dropouts(),
    server: SecAggServer | None = None,
    transit: Transit | None = None,
    noise: Callable[[int], NDArray[np.integer]] | None = None,
) -> SimulatedRound:
    """Run one round; raises :class:`~.errors.SecAggAbort` if too few clients are left.

    ``noise(i)``, if given, is client i's integer noise (distributed DP), drawn when it
    masks its input."""
    n = config.num_clients
    if len(updates) != n:
        raise ValueError(f"{len(updates)} updates for {n} clients")
    clients = [SecAggClient(config, i, client_seed(seed, config.round, i)) for i in range(n)]
    run = SimulatedRound(server if server is not None else SecAggServer(config), clients)
    live = set(range(n)) - dropouts.before_advertise

    def carry(message: ClientMessage | ServerMessage) -> ClientMessage | ServerMessage | None:
        return transit(message) if transit is not None else message

    def upload(messages: dict[int, ClientMessage]) -> None:
        for message in messages.values():
            carried = carry(message)
            if carried is not None:
                # a refused message is counted by the server; its sender counts as dropped
                with suppress(SecAggRefused):
                    run.server.receive(cast(ClientMessage, carried))

    def answer(replies: Mapping[int, ServerMessage], act: Act) -> dict[int, ClientMessage]:
        out = {}
        for i, reply in replies.items():
            carried = carry(reply)
            if i not in live or carried is None:
                continue
            try:
                out[i] = act(clients[i], carried)
            except SecAggRefused as e:  # counted by the client, which drops out
                run.client_refusals.append(e)
        return out

    upload({i: clients[i].advertise() for i in sorted(live)})
    live -= dropouts.after_advertise
    upload(answer(run.server.broadcast_keys(), lambda c, m: c.share_keys(cast(Any, m))))
    live -= dropouts.after_share_keys
    upload(
        answer(
            run.server.forward_shares(),
            lambda c, m: c.masked_input(
                cast(Any, m), updates[c.id], None if noise is None else noise(c.id)
            ),
        )
    )
    live -= dropouts.after_masked_input
    upload(answer(run.server.request_unmask(), lambda c, m: c.unmask(cast(Any, m))))
    run.result = run.server.unmask()
    return run
