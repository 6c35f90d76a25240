"""SecAgg+ as an update stage: each round's sum comes out of the real protocol.

In simulation every client of the round runs its :class:`SecAggClient` and the server its
:class:`SecAggServer`, in one process, messages passed as a transport would carry them. Each
update's delta (update minus the global model) is held for its client only; the stage hands
:class:`~fedloom.stages.Staged` a zero delta in its place, so the plain sum Staged computes
never holds a client's update, and the round's total is what the server unmasks. Put it
last in the stage list: stages after it would see the zero deltas.

A round whose protocol aborts (more dropouts than the threshold allows) raises
:class:`SecAggRoundAborted`, a :class:`~fedloom.errors.QuorumError`: the round loop rolls the
model and the strategy back and retries or skips the round by its ``short_round`` policy
(each retry is a fresh protocol run, with fresh secrets); the record says
``secagg_aborted: true`` and why. Every secret derives from the run seed, the round and the
attempt: the same seed gives the same model, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import torch
from numpy.typing import NDArray

from ...algorithms.base import RoundPlan, Strategy
from ...errors import ConfigError, QuorumError, SecAggAbort
from ...seeding import derive_seed
from ...stages import Stage
from ...update import ClientUpdate
from . import prg
from .compat import check_secagg
from .config import SecAggConfig, recommended_num_shares
from .messages import ClientMessage, ServerMessage
from .quantize import decode_centred
from .simulate import Dropouts, simulate_round
from .sizes import message_bytes

DropoutSchedule = Callable[[int, int], Dropouts]  # (round, clients) -> who drops when
STAGES = ("before_advertise", "after_advertise", "after_share_keys", "after_masked_input")


class SecAggRoundAborted(QuorumError):
    """The round's secure aggregation aborted: too few clients left to unmask the sum."""


class SecureAggregation(Stage):
    """Sum each round's updates with SecAgg+ (Bell et al. 2020); the server sees only the sum.

    Args:
        num_shares: shares of each client's secrets (itself and its neighbours); None:
            about 3 log2 n (:func:`recommended_num_shares`). Capped at the round's clients.
        reconstruction_threshold: shares that rebuild a secret; None: a majority of
            ``num_shares``. More dropouts than ``num_shares - threshold`` abort the round.
        clipping_range: each coordinate of a delta is clipped to ``[-c, c]``.
        quantization_range: levels per coordinate; the sum of m clients is within
            ``m * 2c / (L - 1)`` per coordinate of the sum of their clipped deltas.
        modulus: the ring of the masked sums (a power of two up to 2^32).
        dropout_rate: simulation studies: each client drops out with this probability, at a
            protocol stage drawn uniformly (seeded by the run seed and the round).
        dropouts: simulation studies: ``(round, clients) -> Dropouts``, who drops out when.
    """

    key = "secagg"

    def __init__(
        self,
        num_shares: int | None = None,
        reconstruction_threshold: int | None = None,
        clipping_range: float = 1.0,
        quantization_range: int = 2**16,
        modulus: int = 2**32,
        *,
        dropout_rate: float = 0.0,
        dropouts: DropoutSchedule | None = None,
    ):
        if not 0 <= dropout_rate <= 1:
            raise ValueError(f"{self.key}.dropout_rate must be in [0, 1], got {dropout_rate!r}")
        if num_shares is not None and (type(num_shares) is not int or num_shares < 2):
            raise ValueError(f"{self.key}.num_shares must be an integer >= 2, got {num_shares!r}")
        t = reconstruction_threshold
        if t is not None and (type(t) is not int or not 1 <= t <= (num_shares or t)):
            raise ValueError(
                f"{self.key}.reconstruction_threshold must be an integer in [1, num_shares], "
                f"got {t!r}"
            )
        self.num_shares, self.reconstruction_threshold = num_shares, reconstruction_threshold
        self.clipping_range, self.quantization_range = clipping_range, quantization_range
        self.modulus, self.dropout_rate, self.dropouts = modulus, dropout_rate, dropouts
        self._seed: int | None = None
        self.protocol_config(2, 1)  # refuses bad values now, by name
        self._attempt = (0, 0)  # (round, tries of it): a retried round gets fresh secrets
        self._deltas: dict[int, NDArray[np.float32]] = {}
        self._record: dict[str, Any] = {}

    def check(self, strategy: Strategy) -> None:
        check_secagg(strategy, f"{self.key} (secure aggregation)")

    def start(self, seed: int) -> None:
        self._seed = seed

    def protocol_config(self, clients: int, length: int, round: int = 0) -> SecAggConfig:
        """The protocol's parameters for a round of ``clients`` and ``length`` coordinates."""
        k = min(self.num_shares or recommended_num_shares(clients), clients)
        k -= 1 if k < clients and k % 2 == 0 else 0
        t = min(self.reconstruction_threshold or k // 2 + 1, k)
        graph = 0 if self._seed is None else derive_seed(self._seed, "secagg-graph", round)
        return SecAggConfig(
            clients, length, k, t, float(self.clipping_range), self.quantization_range,
            self.modulus, round, graph,
        )  # fmt: skip

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        last, tries = self._attempt
        self._attempt = (round, tries + 1 if last == round else 1)
        self._deltas = {}
        self._record = {}
        if len(plan.clients) >= 2:
            try:
                self.protocol_config(len(plan.clients), 1, round)
            except ConfigError as e:
                raise ConfigError(f"{self.key}: {e} for a cohort of {len(plan.clients)}") from e

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        """Keep the update's delta for its client; hand on a zero delta."""
        delta = update.params.detach().sub(global_params).to("cpu", torch.float32)
        self._deltas[update.client_id] = self.client_input(delta).numpy()
        update.params.copy_(global_params)
        return update

    def client_input(self, delta: torch.Tensor) -> torch.Tensor:
        """What a client feeds the protocol from its delta (the delta itself here)."""
        return delta

    def process_aggregate(self, round: int, total: torch.Tensor, count: int) -> torch.Tensor:
        """Add the protocol's unmasked sum of the deltas to ``total``."""
        if self._seed is None:
            raise RuntimeError(f"{type(self).__name__}: start(seed) was not called")
        ids = sorted(self._deltas)
        inputs = [self._deltas.pop(i) for i in ids]
        summed = self.run_protocol(round, inputs)
        return total.add_(torch.from_numpy(summed).to(total.device, total.dtype))

    def run_protocol(self, round: int, inputs: list[NDArray[np.float32]]) -> NDArray[np.float64]:
        """One protocol run over ``inputs`` (one per client); the float sum the server gets."""
        assert self._seed is not None
        m, started = len(inputs), time.perf_counter()
        attempt = self._attempt[1]
        self._record = {"secagg_clients": m, "secagg_aborted": False}
        if m < 2:
            self._abort(f"secure aggregation round {round}: {m} client update(s), a sum of "
                        "fewer than 2 would reveal them")
        cfg = self.protocol_config(m, inputs[0].size, round)
        seed = prg.derive(self._seed.to_bytes(8, "big"), f"secagg round {round} try {attempt}")
        up: Counter[int] = Counter()
        down: Counter[int] = Counter()

        def transit(message: ClientMessage | ServerMessage) -> ClientMessage | ServerMessage:
            if isinstance(message, ClientMessage):
                up[message.sender] += message_bytes(message)
            else:
                down[message.receiver] += message_bytes(message)
            return message

        try:
            run = simulate_round(
                cfg, inputs, seed, self._dropouts(round, attempt, m), transit=transit,
                noise=self.client_noise(round, attempt, cfg),
            )  # fmt: skip
        except SecAggAbort as e:
            self._abort(str(e))
        assert run.result is not None
        survivors = len(run.result.survivors)
        self._record.update(
            secagg_survivors=survivors,
            secagg_num_shares=cfg.num_shares,
            secagg_threshold=cfg.reconstruction_threshold,
            secagg_bytes_up_per_client=sum(up.values()) / max(len(up), 1),
            secagg_bytes_down_per_client=sum(down.values()) / max(len(down), 1),
            secagg_refused=sum(run.server.refused.values()),
            secagg_seconds=time.perf_counter() - started,
        )
        summed = decode_centred(run.result.quantized_sum, survivors, cfg)
        self.after_round(round, cfg, survivors)
        return summed

    def client_noise(
        self, round: int, attempt: int, cfg: SecAggConfig
    ) -> Callable[[int], NDArray[np.integer]] | None:
        """Each client's integer noise (distributed DP); none here."""
        del round, attempt, cfg
        return None

    def after_round(self, round: int, cfg: SecAggConfig, survivors: int) -> None:
        """A sum was released by ``survivors`` clients (distributed DP accounts it)."""
        del round, cfg, survivors

    def _dropouts(self, round: int, attempt: int, clients: int) -> Dropouts:
        if self.dropouts is not None:
            return self.dropouts(round, clients)
        if self.dropout_rate == 0:
            return Dropouts()
        assert self._seed is not None
        rng = np.random.default_rng(derive_seed(self._seed, "secagg-dropouts", round, attempt))
        drops = rng.random(clients) < self.dropout_rate
        when = rng.integers(0, len(STAGES), clients)
        return Dropouts(
            **{s: frozenset(np.flatnonzero(drops & (when == j)).tolist())
               for j, s in enumerate(STAGES)}
        )  # fmt: skip

    def _abort(self, reason: str) -> NoReturn:
        """Record why, and hand the round loop a short round (it logs, rolls back, retries
        or skips)."""
        self._record["secagg_aborted"] = True
        self._record["secagg_abort_reason"] = reason
        raise SecAggRoundAborted(reason)

    def round_record(self) -> dict[str, Any]:
        return dict(self._record)
