"""A data holder's part in a secure round: the SecAgg+ stages over the ``SecAgg`` call.

After training, a client whose TRAIN instruction carries SecAgg+ parameters sends its delta
(trained model minus the round's model) masked instead of uploading its model:
:class:`SecAggSession` drives a :class:`~fedloom.privacy.secagg.SecAggClient` through the
four stages, sending each stage's message and asking again (``WAIT``) until the aggregator
answers with the next stage's message. Every answer is checked field by field
(:mod:`.secagg_wire`) and by the protocol's client before use. A refused message, an aborted
round or a stage that closed without this client ends its part: the round goes on without it.
Its secrets come from ``os.urandom``, new for every session.

Distributed DP: when the parameters say so (checked by
:func:`~.secagg_wire.noise_from_proto`), the client clips its delta to L2 norm
``clip_norm`` and adds its Skellam share of the noise to the quantised delta before any
mask. The share is drawn from this client's own secret randomness (``secrets``), never from
the run seed, which the aggregator chooses and knows: the aggregator cannot subtract it. A
client whose own config says ``privacy.mode = "distributed"`` (``expected``) refuses, before
sending anything, a round whose parameters do not say distributed DP with its config's values
(:func:`check_expected`): the aggregator can neither switch the noise off nor shrink it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import FedloomError
from ..privacy.ddp_noise import SkellamShares
from ..privacy.secagg import (
    ClientMessage,
    ForwardedShares,
    NeighbourKeys,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggRefused,
    ServerMessage,
    UnmaskRequest,
)
from .proto import fedloom_pb2 as pb
from .secagg_wire import (
    STAGE_OF,
    noise_from_proto,
    params_from_proto,
    request_payloads,
    server_message,
)

log = logging.getLogger("fedloom.client")

Call = Callable[[pb.SecAggRequest], pb.SecAggReply]


class SecAggSession:
    """One client's part in one secure round.

    Args:
        call: sends one request to the aggregator (with the channel's retries).
        header: the request's identity fields (``task_id``, ``client_id``, ``token``).
        params: the instruction's SecAgg+ parameters.
        vector_length: the model's length; the parameters must agree with it.
        give_up: seconds to wait for any one answer before leaving the round (the server's
            deadlines end a stage long before that).
        noise_seed: tests only: a client-local seed of the distributed-DP noise (with the
            session and index); None, always in a deployment: secret randomness.
        expected: the distributed-DP values this client's own config fixes (``[privacy]``
            keys: :data:`EXPECTED`); None: whatever sane values the aggregator sends.
    """

    def __init__(
        self,
        call: Call,
        header: dict[str, str],
        params: pb.SecAggParams,
        vector_length: int,
        give_up: float | None = None,
        noise_seed: int | None = None,
        expected: Mapping[str, float] | None = None,
    ):
        self.call, self.header = call, header
        self.config: SecAggConfig
        self.config, self.index = params_from_proto(params, vector_length)
        self.noise = noise_from_proto(params, self.config)
        check_expected(self.noise, self.config, expected, header.get("client_id", "?"))
        self.noise_seed = noise_seed
        self.give_up = give_up if give_up is not None else 4 * params.stage_timeout_s + 600.0
        self.outcome = ""  # "done", or why this client left the round

    def run(self, delta: NDArray[np.floating]) -> bool:
        """The four stages with ``delta``; True when this client's part is done."""
        client = SecAggClient(self.config, self.index)
        try:
            keys = self.exchange(client.advertise())
            if not isinstance(keys, NeighbourKeys):
                return False
            shares = self.exchange(client.share_keys(keys))
            if not isinstance(shares, ForwardedShares):
                return False
            noise = None
            if self.noise is not None:
                delta = clip_l2(delta, self.noise.clip_norm)
                noise = self.noise.draw(self._noise_rng(), self.config)
            request = self.exchange(client.masked_input(shares, delta, noise))
            if not isinstance(request, UnmaskRequest):
                return False
            self.exchange(client.unmask(request))
        except (SecAggAbort, SecAggRefused) as e:
            self.outcome = str(e)
            log.warning("client %s: secure aggregation: %s", self.header["client_id"], e)
            return False
        return self.outcome == "done"

    def _noise_rng(self) -> np.random.Generator:
        if self.noise_seed is None:
            return np.random.default_rng(secrets.randbits(128))
        return np.random.default_rng([self.noise_seed, self.config.round, self.index])

    def exchange(self, message: ClientMessage) -> ServerMessage | None:
        """Send ``message``; the server's next message for this client, or None when this
        client's part is over (``outcome`` says why)."""
        stage = STAGE_OF[type(message)]
        fields: dict[str, Any] = dict(
            self.header, session=self.config.round, index=self.index, stage=stage
        )
        for payload in request_payloads(message):  # a long masked vector goes in parts
            reply = self.call(pb.SecAggRequest(**fields, **payload))
            if reply.kind != pb.SecAggReply.WAIT:
                break
        deadline = time.monotonic() + self.give_up
        while reply.kind == pb.SecAggReply.WAIT:
            if time.monotonic() > deadline:
                self.outcome = f"no answer to stage {stage} for {self.give_up:.0f} s"
                return None
            asked = time.monotonic()
            reply = self.call(pb.SecAggRequest(**fields))
            if reply.kind == pb.SecAggReply.WAIT and time.monotonic() - asked < 0.05:
                time.sleep(0.05)  # the aggregator could not hold the call: do not spin
        if reply.kind == pb.SecAggReply.NEXT:
            return server_message(reply, stage, self.config, self.index)
        if reply.kind == pb.SecAggReply.DONE:
            self.outcome = "done"
            return None
        self.outcome = reply.reason or f"reply kind {reply.kind}"
        log.warning(
            "client %s: secure aggregation stage %d: %s",
            self.header["client_id"],
            stage,
            self.outcome,
        )
        return None


def clip_l2(delta: NDArray[np.floating], bound: float) -> NDArray[np.float64]:
    """``delta`` scaled down to L2 norm ``bound`` if longer (a new float64 vector)."""
    out = np.asarray(delta, dtype=np.float64).copy()
    norm = float(np.linalg.norm(out))
    if norm > bound:
        out *= bound / norm
    return out


#: the [privacy] keys a client's config fixes for distributed DP: on the noise or the protocol
EXPECTED = {
    "noise_multiplier": "noise",
    "clip_norm": "noise",
    "dropout_tolerance": "noise",
    "clipping_range": "protocol",
    "quantization_range": "protocol",
    "modulus": "protocol",
}


def check_expected(
    noise: SkellamShares | None,
    config: SecAggConfig,
    expected: Mapping[str, float] | None,
    client: str,
) -> None:
    """Raise one line naming the key when a round's parameters are not those of this client's
    own ``privacy.mode = "distributed"`` config (``expected``; None: nothing to compare)."""
    if expected is None:
        return
    if noise is None:
        raise FedloomError(
            f"client {client}: this client's config says privacy.mode = 'distributed', but the "
            "aggregator's secure round has no distributed DP (distributed_dp = false): not "
            "sending an update without its noise"
        )
    for key in sorted(expected):
        got = getattr(noise if EXPECTED[key] == "noise" else config, key)
        if got != expected[key]:
            raise FedloomError(
                f"client {client}: the aggregator's secure round has {key} = {got!r}, this "
                f"client's config {expected[key]!r} (privacy.{key}): run the same config on "
                "both sides"
            )
