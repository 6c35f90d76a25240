"""A data holder: dials out to the aggregator, trains the user's Task, uploads updates.

The client trains with the simulation's own engine (:class:`InProcessClients`), seeded from
the run seed the aggregator sends at check-in, so a client's update is bit-identical to what
the simulation computes for that client and round; local DP and DP-SGD noise excepted, which
comes from the client's own secret seed (:mod:`fedloom.privacy.clientnoise`).

The transport (check-in with retries and backoff, polling, bulk or gRPC transfers, heartbeats
while training, checking in again after an aggregator restart) is
:class:`~fedloom.runtime.channel.ClientChannel`, shared with :func:`fedloom.connect`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch

from ..algorithms.base import RoundPlan
from ..compression.link import Compression
from ..errors import FedloomError
from ..params import ParamSpec
from ..privacy.clientnoise import ClientNoise
from ..simulation import InProcessClients
from ..task import Task
from ..wire import MAX_EXTRAS
from .channel import RETRYABLE, ClientChannel, RefusedError, UnreachableError, log
from .clientstate import ClientStateFile
from .coding import ClientCoding
from .proto import fedloom_pb2 as pb
from .secagg_client import SecAggSession
from .security import TLSConfig

__all__ = ["RETRYABLE", "RefusedError", "RuntimeClient", "UnreachableError"]


class RuntimeClient(ClientChannel):
    """Runs one data holder until the aggregator says STOP.

    Args:
        task: the user's task (the same class the simulation uses).
        server: the aggregator's ``host:port``.
        client_id: this data holder's id (an index of ``task``'s clients).
        token: the secret the aggregator expects from this client, if it uses tokens.
        tls: CA (and client cert/key for mutual TLS); ``None`` for a plain channel.
        retry_for: seconds to keep retrying an unreachable aggregator before giving up.
        use_bulk: move models over the aggregator's bulk port when it offers one (falling
            back to gRPC when that fails); ``False`` always uses the gRPC stream.
        engine: what trains this client's rounds (``distribute``/``collect``, ``spec`` and
            ``seed``, as :class:`InProcessClients`); a relay node passes its own edge loop.
        num_samples: the weight announced at check-in (default: the task's count for
            ``client_id``; a relay announces its whole population).
        noise: this client's seed for local DP and DP-SGD noise and its check of the work's
            privacy parameters (default: a secret seed, whatever part the work names).
        compression: the run's chains (``[compression]``, the aggregator's config): models
            arrive and updates leave as their packets (:class:`~.coding.ClientCoding`).
        state_file: where this client keeps its state across a restart of its process
            (:class:`~.clientstate.ClientStateFile`): put into the engine at check-in, written
            after each round trained, before its update is sent.
    """

    #: what runs a secure round's stages (a test may stand in one that stops at a stage)
    secagg_session = SecAggSession

    def __init__(
        self,
        task: Task,
        server: str,
        client_id: int,
        *,
        token: str = "",
        task_id: str = "fedloom",
        tls: TLSConfig | None = None,
        retry_for: float = 60.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        on_round: Callable[[int, dict[str, float]], None] | None = None,
        use_bulk: bool = True,
        engine: Any = None,
        num_samples: int | None = None,
        noise: ClientNoise | None = None,
        compression: Compression | None = None,
        state_file: ClientStateFile | None = None,
    ):
        super().__init__(
            server,
            client_id,
            token=token,
            task_id=task_id,
            tls=tls,
            retry_for=retry_for,
            backoff=backoff,
            use_bulk=use_bulk,
        )
        self.task, self.on_round = task, on_round
        self.engine: Any = engine
        self.num_samples = num_samples
        self.noise = noise or ClientNoise()
        self.rounds_done = 0
        self.coding = ClientCoding(self.client_id, compression)
        self.state_file = state_file

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Train until told to stop; returns the number of rounds this client trained.

        A gRPC status no retry can mend (the address is some other service, the aggregator
        failed) ends the run as a one-line :class:`FedloomError` naming it."""
        with self._connected():
            self._check_in()
            while True:
                ins = self._next_instruction()
                if ins.kind == pb.Instruction.STOP:
                    log.info(
                        "client %d: task finished after %d rounds", self.client_id, self.rounds_done
                    )
                    return self.rounds_done
                self._train(ins)

    def _train(self, ins: pb.Instruction) -> None:
        assert self.engine is not None
        if self.noise.distributed is not None and not ins.HasField("secagg"):
            # a round in the clear would carry this client's update without its noise share
            raise FedloomError(
                f"this client's config says privacy.mode = 'distributed', but the aggregator "
                f"sent round {ins.round} without secure aggregation; run the same config on "
                "both sides"
            )
        limit = self.engine.spec.nbytes * (1 + MAX_EXTRAS) + (1 << 20)
        data = self._fetch(ins, limit)
        if data is None:  # the round closed before we started
            return
        params, tensors = self.coding.model(ins.round, data, self.engine.spec)
        # local DP / DP-SGD noise from this client's own seed, never the aggregator's
        config = self.noise.take(json.loads(ins.config_json or "{}"), self.client_id)
        plan = RoundPlan.from_wire(config, [self.client_id], tensors)
        self.engine.distribute(ins.round, plan, params)
        t0 = time.perf_counter()
        with self._heartbeats():
            update = next(self.engine.collect())
        metrics = dict(update.metrics, seconds=time.perf_counter() - t0)
        if ins.HasField("secagg"):
            self._keep_state(ins.round)
            self._send_masked(ins, params, update.params, bool(update.extras.get("tensors")))
            self._trained(ins, metrics)
            return
        parts = self.coding.update(ins.round, self.engine, params, update)
        self._keep_state(ins.round)
        reply = self._send(ins, parts, update.num_samples, metrics)
        if not reply.accepted:
            log.warning(
                "client %d: round %d update refused: %s", self.client_id, ins.round, reply.reason
            )
        self._trained(ins, metrics)

    def _send_masked(
        self, ins: pb.Instruction, before: torch.Tensor, after: torch.Tensor, extras: bool
    ) -> None:
        """Take part in the round's secure aggregation with the delta ``after - before``."""
        if extras:  # e.g. SCAFFOLD's control variate: it would travel in the clear
            log.warning(
                "client %d: round %d: this strategy sends extra tensors, which secure "
                "aggregation cannot carry; not taking part",
                self.client_id,
                ins.round,
            )
            return
        delta = (after.double() - before.double()).numpy()
        session = self.secagg_session(
            self._secagg_call,
            self._identity(),
            ins.secagg,
            delta.shape[0],
            expected=self.noise.distributed,
        )
        with self._heartbeats():
            done = session.run(delta)
        if not done:
            log.warning(
                "client %d: round %d: left the secure aggregation: %s",
                self.client_id,
                ins.round,
                session.outcome,
            )

    def _keep_state(self, rnd: int) -> None:
        """Save the state before the update leaves: a crash before it arrives over-counts
        the accountant, never under-counts it."""
        if self.state_file is not None:
            self.state_file.save(self.engine, self.coding, rnd)

    def _trained(self, ins: pb.Instruction, metrics: dict[str, float]) -> None:
        self.rounds_done += 1
        log.info(
            "client %d: round %d trained (loss %.4f, %.2f s)",
            self.client_id,
            ins.round,
            metrics.get("loss", float("nan")),
            metrics["seconds"],
        )
        if self.on_round:
            self.on_round(ins.round, metrics)

    # -- check-in ----------------------------------------------------------------------------
    def _announced_samples(self) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return self.task.num_samples(self.client_id)

    def _on_check_in(self, reply: pb.CheckInReply, spec: ParamSpec) -> None:
        self.coding.checked_in(reply.seed)
        if self.engine is None:
            self.engine = InProcessClients(self.task, reply.seed)
        elif self.engine.seed != reply.seed:
            if not isinstance(self.engine, InProcessClients):
                raise FedloomError(
                    f"client {self.client_id}: the aggregator's run seed {reply.seed} differs "
                    f"from this node's {self.engine.seed}; run the same config on both sides"
                )
            self.engine = InProcessClients(self.task, reply.seed)
        if spec != self.engine.spec:
            raise FedloomError(
                f"client {self.client_id}: the aggregator's model spec ({spec}) differs "
                f"from this task's model ({self.engine.spec}); run the same task on both sides"
            )
        restored = self.state_file and self.state_file.restore(self.engine, self.coding)
        if restored is not None:
            log.info("client %d: state after round %d restored", self.client_id, restored)
