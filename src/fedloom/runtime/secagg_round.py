"""Synchronous rounds under secure aggregation (SecAgg+): the aggregator learns only the sum.

Clients train as in :class:`~.sync_round.SyncRounds`, but their TRAIN instruction carries the
round's SecAgg+ parameters (:class:`~fedloom.runtime.proto.fedloom_pb2.SecAggParams`), and
instead of uploading the update they run the protocol's four stages with the aggregator over
the ``SecAgg`` call: advertise keys, share keys, masked input, unmask. The aggregator relays
the stage messages (keys broadcast, encrypted shares forwarded) through a
:class:`~fedloom.privacy.secagg.SecAggServer`, closes each stage when every expected client
answered, went silent or the stage's deadline passed (the missing ones are dropouts of that
stage), and unmasks only the sum of the survivors' quantised deltas.

``collect`` then yields ONE update, client id :data:`AGGREGATE_ID`: the global model plus the
uniform mean of the survivors' deltas (each clipped to ``clipping_range`` per coordinate and
quantised; off by less than one quantisation step per coordinate), weighted by the survivors'
declared sample counts in total. FedAvg of that one update is the update itself, so the
round's model is the uniform average of the survivors' models. With distributed DP
(``SecAggSettings.noise``) the instruction also carries the noise calibration: each client
clips its delta to L2 norm ``clip_norm`` and adds its Skellam share before masking, so the
unmasked sum is noisy, decoded with :func:`~fedloom.privacy.secagg.decode_centred` (the
noise may take it below zero). Too few survivors
(:class:`~fedloom.privacy.secagg.SecAggAbort`) end the round with :class:`QuorumError`: the
loop retries or skips it, as any short round. Each attempt is its own protocol session, so a
message replayed from an earlier one is refused (``stale_round``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from ..algorithms.base import RoundPlan
from ..errors import ConfigError, QuorumError
from ..privacy.ddp_noise import SkellamShares
from ..privacy.secagg import (
    AggregateResult,
    ClientMessage,
    MaskedInput,
    SecAggAbort,
    SecAggConfig,
    SecAggRefused,
    SecAggServer,
    ServerMessage,
    decode_centred,
    recommended_num_shares,
)
from ..update import ClientUpdate
from .gate import Tally
from .membership import Membership
from .proto import fedloom_pb2 as pb
from .publish import Published, Publisher
from .secagg_wire import MaskedParts, client_message, params_to_proto, reply_for
from .sync_round import SyncRounds

log = logging.getLogger("fedloom.server")

#: the client id of the one aggregated update a secure round yields
AGGREGATE_ID = -1


@dataclass(frozen=True)
class SecAggSettings:
    """The aggregator's secure-aggregation knobs; each round's protocol config follows from
    them and the number of sampled clients n.

    ``num_shares`` defaults to :func:`recommended_num_shares` (n), and is capped at n (made odd
    below n); ``reconstruction_threshold`` defaults to a majority of the shares,
    ``num_shares // 2 + 1``. ``stage_timeout`` bounds each stage after the first (keys are
    advertised after training, so the first waits as long as the round, ``round_timeout``).
    ``noise``: distributed DP, each client's share of the noise (None: no noise).
    """

    num_shares: int | None = None
    reconstruction_threshold: int | None = None
    clipping_range: float = 1.0
    quantization_range: int = 2**16
    stage_timeout: float = 30.0
    modulus: int = 2**32
    noise: SkellamShares | None = None

    def __post_init__(self) -> None:
        bad = [
            f"{name}={value}"
            for name, value, ok in (
                ("num_shares", self.num_shares, self.num_shares is None or self.num_shares >= 2),
                (
                    "reconstruction_threshold",
                    self.reconstruction_threshold,
                    self.reconstruction_threshold is None or self.reconstruction_threshold >= 1,
                ),
                ("clipping_range", self.clipping_range, self.clipping_range > 0),
                ("quantization_range", self.quantization_range, self.quantization_range >= 2),
                ("stage_timeout", self.stage_timeout, self.stage_timeout > 0),
            )
            if not ok
        ]
        if bad:
            raise ConfigError("invalid secure aggregation settings: " + ", ".join(bad))

    def config(self, n: int, vector_length: int, session: int, graph_seed: int) -> SecAggConfig:
        """The protocol config of a round of ``n`` clients (raises ConfigError if invalid)."""
        k = min(self.num_shares or recommended_num_shares(n), n)
        if k < n and k % 2 == 0:
            k -= 1
        t = min(self.reconstruction_threshold or k // 2 + 1, k)
        return SecAggConfig(
            num_clients=n,
            vector_length=vector_length,
            num_shares=k,
            reconstruction_threshold=t,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus=self.modulus,
            round=session,
            graph_seed=graph_seed,
        )


class SecAggRounds(SyncRounds):
    """The :class:`~fedloom.runtime.rounds.RoundService` of secure synchronous rounds.

    ``on_message`` (if set) sees every client message the aggregator accepted, as the
    aggregator holds it: an audit hook (tests record what a curious aggregator could see).
    """

    def __init__(
        self,
        cv: threading.Condition,
        publisher: Publisher,
        membership: Membership,
        tally: Tally,
        settings: SecAggSettings,
        *,
        vector_length: int,
        graph_seed: int,
        quorum: int,
        round_timeout: float | None,
        poll_interval: float,
    ):
        super().__init__(
            cv,
            publisher,
            membership,
            quorum=quorum,
            round_timeout=round_timeout,
            poll_interval=poll_interval,
        )
        self.tally, self.settings = tally, settings
        self.vector_length, self.graph_seed = vector_length, graph_seed
        self.on_message: Callable[[int, ClientMessage], None] | None = None
        self.sessions = 0  # protocol sessions started (one per attempt of a round)
        self._server: SecAggServer | None = None
        self._index: dict[int, int] = {}  # runtime client id -> protocol id
        self._global = torch.empty(0)
        self._sent: dict[int, int] = {}  # protocol id -> the last stage it sent
        self._closed = 0  # the last stage closed
        self._replies: dict[int, dict[int, ServerMessage]] = {}  # stage -> protocol id -> reply
        self._aborted = ""
        self._parts = MaskedParts()

    # -- the round loop's side ------------------------------------------------------------
    def _start(self, plan: RoundPlan, published: Published, global_params: torch.Tensor) -> None:
        """Open the round and its protocol session at once (lock held), so no TRAIN
        instruction pairs one round's model with another session."""
        super()._start(plan, published, global_params)
        clients = sorted(plan.clients)
        self.sessions += 1
        self._index = {cid: i for i, cid in enumerate(clients)}
        self._sent, self._closed, self._replies, self._aborted = {}, 0, {}, ""
        self._parts = MaskedParts()
        self._global = global_params.detach().clone()
        self._server = None
        if len(clients) >= 2:  # fewer: collect says the round is short
            config = self.settings.config(
                len(clients), self.vector_length, self.sessions, self.graph_seed
            )
            if self.settings.noise is not None:
                self.settings.noise.check_fits(config)
            self._server = SecAggServer(config)

    def collect(self) -> Iterator[ClientUpdate]:
        """Run the stages, then yield the one aggregated update (see the module's text)."""
        rnd = self.publisher.current.round
        try:
            result = self._run_protocol(rnd)
        except SecAggAbort as e:
            with self.cv:
                self._aborted = str(e)
                self.cv.notify_all()
            log.error("round %d: %s", rnd, e)
            raise QuorumError(f"round {rnd}: {e}") from None
        if len(result.survivors) < max(2, self.quorum):  # one survivor: its own update
            raise QuorumError(
                f"round {rnd}: {len(result.survivors)} clients survived secure aggregation; "
                f"the quorum is {max(2, self.quorum)}"
            )
        yield self._aggregate(rnd, result)

    # -- the handlers' side ---------------------------------------------------------------
    def params_for(self, cid: int) -> pb.SecAggParams | None:
        """The protocol parameters a TRAIN instruction carries to ``cid`` (lock held)."""
        if self._server is None or cid not in self._index:
            return None
        return params_to_proto(
            self._server.config, self._index[cid], self.settings.stage_timeout,
            self.settings.noise,
        )  # fmt: skip

    def claim(self, cid: int, round: int, version: int) -> tuple[bool, bool]:
        """No plain upload is wanted: updates arrive masked, through :meth:`exchange`."""
        return False, False

    def exchange(self, cid: int, request: pb.SecAggRequest, hold: float) -> pb.SecAggReply:
        """Take ``cid``'s stage message (if the request carries one), then answer with the
        server's next message for it once its stage closed, holding the call up to ``hold``
        seconds (``WAIT``: ask again)."""
        with self.cv:
            server = self._server
            try:
                if server is None or request.session != server.config.round:
                    raise SecAggRefused("stale_round", f"session {request.session}")
                if self._index.get(cid) != request.index:
                    raise SecAggRefused("unknown_sender", f"client {cid} as {request.index}")
                if request.WhichOneof("payload") is not None:
                    early = self._take(cid, request, server)
                    if early is not None:
                        return early
                elif not 1 <= request.stage <= 3 or self._sent.get(request.index) != request.stage:
                    raise SecAggRefused("out_of_order", f"an answer to stage {request.stage}")
            except SecAggRefused as e:
                self.tally.count(f"secagg_{e.kind}", f"client {cid}: {e}")
                return pb.SecAggReply(kind=pb.SecAggReply.REFUSED, reason=str(e))
            deadline = time.monotonic() + hold
            while (reply := self._answer(request.index, request.stage)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return pb.SecAggReply(kind=pb.SecAggReply.WAIT)
                self.membership.touch(cid)
                self.cv.wait(timeout=left)
            self.membership.touch(cid)
            return reply

    def _take(
        self, cid: int, request: pb.SecAggRequest, server: SecAggServer
    ) -> pb.SecAggReply | None:
        """Check and keep a stage message (raises SecAggRefused); a reply to send at once
        (``WAIT`` for more parts, ``DONE`` after the last stage), or None to answer it."""
        message: ClientMessage | None = (
            self._masked_part(request)
            if request.WhichOneof("payload") == "masked_input"
            else client_message(request, server.config)
        )
        if message is None:  # more parts to come
            return pb.SecAggReply(kind=pb.SecAggReply.WAIT)
        server.receive(message)
        self._sent[request.index] = request.stage
        if self.on_message is not None:
            self.on_message(cid, message)
        self.cv.notify_all()
        return pb.SecAggReply(kind=pb.SecAggReply.DONE) if request.stage == 4 else None

    def _masked_part(self, request: pb.SecAggRequest) -> MaskedInput | None:
        """A part of a masked input, from a client that shared keys and sent none yet."""
        index = request.index
        if self._sent.get(index, 0) >= 3:
            raise SecAggRefused("duplicate", f"a second masked input from {index}")
        if self._closed != 2:
            raise SecAggRefused("out_of_order", f"a masked input after stage {self._closed}")
        if index not in self._replies[2]:
            raise SecAggRefused("unknown_sender", f"{index} shared no keys")
        assert self._server is not None
        return self._parts.add(request, self._server.config)

    def _answer(self, index: int, stage: int) -> pb.SecAggReply | None:
        if self._aborted:
            return pb.SecAggReply(kind=pb.SecAggReply.ABORTED, reason=self._aborted)
        if self._closed < stage:
            return None
        message = self._replies[stage].get(index)
        if message is None:
            reason = f"stage {stage} closed without this client's message"
            return pb.SecAggReply(kind=pb.SecAggReply.ABORTED, reason=reason)
        return reply_for(message)

    # -- the stages -----------------------------------------------------------------------
    def work_for(self, cid: int) -> bool:
        """Work only for a round that runs the protocol: with fewer than 2 clients there is
        none, and a client told to train would upload its update in the clear."""
        return self._server is not None and super().work_for(cid)

    def _run_protocol(self, rnd: int) -> AggregateResult:
        server = self._server
        if server is None:
            raise QuorumError(f"round {rnd}: secure aggregation needs at least 2 clients")
        stage_timeout = self.settings.stage_timeout
        with self.cv:
            first = None if self.round_timeout is None else self._round_started + self.round_timeout
            self._wait_stage(1, set(self._index.values()), first)
            closes: list[Callable[[], Mapping[int, ServerMessage]]] = [
                server.broadcast_keys,
                server.forward_shares,
                server.request_unmask,
            ]
            for stage, close in enumerate(closes, start=1):
                replies = dict(close())
                self._replies[stage], self._closed = replies, stage
                self.cv.notify_all()
                log.info("round %d: secagg stage %d closed: %d clients", rnd, stage, len(replies))
                self._wait_stage(stage + 1, set(replies), time.monotonic() + stage_timeout)
            before = server.refused["inconsistent"]
            try:
                return server.unmask()
            finally:  # shares that rebuild no advertised secret: counted as refusals
                for _ in range(server.refused["inconsistent"] - before):
                    self.tally.count("secagg_inconsistent", f"round {rnd}: shares inconsistent")

    def _wait_stage(self, stage: int, expected: set[int], deadline: float | None) -> None:
        """Wait (lock held) until every expected client sent its stage message, is gone, or
        the deadline passed."""
        ids = {i: cid for cid, i in self._index.items()}

        def pending() -> bool:
            return any(
                self._sent.get(i, 0) < stage and ids[i] in self.membership.members for i in expected
            )

        while pending() and (deadline is None or time.monotonic() < deadline):
            self.cv.wait(timeout=self.poll_interval * 4)
            self.membership.drop_silent()

    def _aggregate(self, rnd: int, result: AggregateResult) -> ClientUpdate:
        """Global model + the survivors' mean delta, as one update of their total weight."""
        ids = {i: cid for cid, i in self._index.items()}
        survivors = [ids[i] for i in result.survivors]
        total = result.total
        if self.settings.noise is not None:  # signed noise: the sum may leave [0, m (L - 1)]
            assert self._server is not None
            total = decode_centred(result.quantized_sum, len(survivors), self._server.config)
        mean = torch.from_numpy(total / len(survivors))
        params = (self._global.double() + mean).to(self._global.dtype)
        with self.cv:
            weight = sum(
                m.num_samples
                for cid in survivors
                if (m := self.membership.members.get(cid)) is not None
            )
            current = self.publisher.current
        log.info("round %d: securely aggregated %d of %d clients", rnd, len(survivors), len(ids))
        metrics = {"secagg_survivors": float(len(survivors))}
        return ClientUpdate(
            AGGREGATE_ID, params, max(1, weight), metrics, current.round, current.version
        )


def quantisation_bound(settings: SecAggSettings) -> float:
    """The most one coordinate of the mean delta may be off: one quantisation step."""
    return 2 * settings.clipping_range / (settings.quantization_range - 1) * (1 + math.ulp(1.0))


__all__ = ["AGGREGATE_ID", "SecAggRounds", "SecAggSettings", "quantisation_bound"]
