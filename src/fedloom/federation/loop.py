"""The round loop: AlphaMed's explicit states, shared by the simulation and the network runtime.

    START_ROUND -> DISTRIBUTE -> TRAIN -> UPLOAD -> AGGREGATE -> CLOSE_ROUND ... -> FINISH

Where clients train is the backend's business (in this process, in worker processes, over
gRPC). The loop samples, streams accepted updates into the strategy, rejects bad ones with a
logged reason, evaluates, and tells callbacks (recording, checkpoints, stop rules). Updates
are aggregated as they arrive, so TRAIN and UPLOAD overlap: in a simulation client by client.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, cast

import torch

from ..algorithms.base import RoundPlan, Strategy
from ..compression.accounting import WireSize
from ..errors import CheckpointError, QuorumError, WireError
from ..params import ParamSpec, flatten_module
from ..rounds import RoundTally, sampling_rng
from ..seeding import derive_seed, seed_torch
from ..task import Task
from ..update import ClientUpdate, checked_metrics
from ..wire import check_finite_values, encode

log = logging.getLogger("fedloom")


class RoundState(StrEnum):
    START_ROUND = "start_round"
    DISTRIBUTE = "distribute"
    TRAIN = "train"
    UPLOAD = "upload"
    AGGREGATE = "aggregate"
    CLOSE_ROUND = "close_round"
    FINISH = "finish"


class Backend(Protocol):
    """Where clients train. ``collect`` yields updates in a deterministic order.

    ``close``, ``round_stats`` and ``node_metrics`` are optional hooks: inherit
    :class:`~fedloom.backend.BackendBase` for their no-op defaults (every simulation engine
    does), so callers call them instead of probing.
    """

    def available_clients(self, round: int) -> list[int]: ...
    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None: ...
    def collect(self) -> Iterator[ClientUpdate]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def round_stats(self) -> dict[str, Any]: ...
    def node_metrics(self) -> dict[str, dict[str, float]]: ...


BACKEND_METHODS = (
    "available_clients",
    "distribute",
    "collect",
    "state_dict",
    "load_state_dict",
    "close",
    "round_stats",
    "node_metrics",
)

ShortRound = Literal["retry", "skip", "abort"]


class Callback:
    """Hooks into the loop. ``on_round_end`` returning True stops training after that round."""

    def on_start(self, fed: Federation) -> None: ...
    def on_state(self, fed: Federation, state: RoundState, round: int) -> None: ...
    def on_update(self, fed: Federation, update: ClientUpdate, error: str | None) -> None: ...
    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool | None: ...
    def on_finish(self, fed: Federation, result: RunResult) -> None: ...
    def on_error(self, fed: Federation, exc: BaseException) -> None: ...


@dataclass
class RunResult:
    params: torch.Tensor
    history: list[dict[str, Any]]
    final_metrics: dict[str, float]
    stop_reason: str
    rounds: int = field(default=0)


class Federation:
    """Runs ``rounds`` rounds of ``strategy`` over ``backend``'s clients for ``task``.

    Args:
        task: the user's task (model, data, hooks).
        strategy: sampling and aggregation. A strategy with a ``prepare(task, model, seed)``
            method gets the freshly built model before it is flattened (FedPer sets the task's
            personal layers there; IFCA and clustered FL make their cluster models).
        backend: where clients train; the in-process simulation by default. A callable is
            called with the model's spec to make the backend (the network aggregator needs it).
        rounds: maximum number of rounds.
        seed: the run seed; drives initial model, sampling and every client's training.
        eval_every: evaluate the global model every N rounds (and after the last).
        target: ``(metric, value)``; stop once an evaluation reaches it (``*loss`` metrics
            must fall to it, others rise to it), or ``(metric, value, "min" | "max")`` to
            say which way the metric improves.
        callbacks: recording, checkpointing, extra stop rules.
        stragglers: share of each round's clients that run a random number of local epochs
            in [1, E] (FedProx's systems heterogeneity); strategies that do not accept
            partial work drop those that fall short of E, as FedAvg's paper does.
        short_round: what a round short of its quorum (:class:`QuorumError` from the backend)
            does: ``"retry"`` it up to ``round_retries`` times, then skip it; ``"skip"`` it at
            once (the model stays as it was, the record says why); ``"abort"`` the run.
        max_update_norm: reject updates farther than this (L2) from the round's global model.

    A round whose aggregate would hold NaN or Inf (finite but huge updates overflow a mean)
    is rolled back, model and strategy state, with the clients of the largest values named
    in the log and the record (``aggregate_rejected``); the run goes on.
    """

    def __init__(
        self,
        task: Task,
        strategy: Strategy,
        backend: Backend | Callable[[ParamSpec], Backend] | None = None,
        *,
        rounds: int,
        seed: int = 0,
        eval_every: int = 1,
        target: tuple[str, float] | tuple[str, float, str] | None = None,
        callbacks: Sequence[Callback] = (),
        stragglers: float = 0.0,
        short_round: ShortRound = "retry",
        round_retries: int = 3,
        max_update_norm: float | None = None,
    ):
        if short_round not in ("retry", "skip", "abort"):
            raise ValueError(f"short_round must be retry, skip or abort, got {short_round!r}")
        if round_retries < 0:
            raise ValueError(f"round_retries must be >= 0, got {round_retries}")
        if max_update_norm is not None and not 0 < max_update_norm < math.inf:
            raise ValueError(f"max_update_norm must be finite and > 0, got {max_update_norm}")
        self.short_round, self.round_retries = short_round, round_retries
        self.max_update_norm = max_update_norm
        if not 0 <= stragglers <= 1:
            raise ValueError(f"stragglers must be in [0, 1], got {stragglers}")
        self.stragglers = stragglers
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.task, self.strategy, self.seed = task, strategy, seed
        self.rounds, self.eval_every, self.target = rounds, eval_every, target
        self.callbacks = list(callbacks)
        seed_torch(derive_seed(seed, "init"))
        self.model = task.build_model()
        strategy.prepare(task, self.model, seed)  # FedPer's personal layers, IFCA's k models
        self.spec: ParamSpec
        self.spec, self.params = flatten_module(self.model, task.personal_layers)
        if backend is None:
            from ..simulation import InProcessClients

            backend = InProcessClients(task, seed)
        elif callable(backend) and not hasattr(backend, "collect"):
            backend = backend(self.spec)  # a factory that needs the model spec (the server)
        missing = [m for m in BACKEND_METHODS if not callable(getattr(backend, m, None))]
        if missing:  # checked once, here, so the loop calls the hooks without probing
            raise TypeError(
                f"backend {type(backend).__name__} lacks {missing}: a backend inherits "
                "fedloom.backend.BackendBase for the optional hooks' no-op defaults"
            )
        self.backend: Backend = cast(Backend, backend)
        self.round = 0
        self.plan = RoundPlan([])
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, float] = {}
        self.wire_bytes = len(encode(self.params, self.spec, {"round": 0, "version": 0}))
        self.wire_size = WireSize(self.spec)  # exact sizes of the wire format's bytes
        self._bytes_up = 0

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        for cb in self.callbacks:
            cb.on_start(self)
        try:
            reason = "max_rounds"
            while self.round < self.rounds:
                if (why := self.strategy.stop_reason()) is not None:
                    log.warning("stopping before round %d: %s", self.round + 1, why)
                    reason = why
                    break
                record = self.run_round(self.round + 1)
                stop = [bool(cb.on_round_end(self, record)) for cb in self.callbacks]
                if self._target_reached(record):
                    reason = "target"
                    break
                if any(stop):
                    reason = "callback"
                    break
            self._state(RoundState.FINISH, self.round)
            result = RunResult(self.params, self.history, dict(self.last_eval), reason, self.round)
        except BaseException as e:
            for cb in self.callbacks:
                cb.on_error(self, e)
            raise
        for cb in self.callbacks:
            cb.on_finish(self, result)
        return result

    def run_round(self, rnd: int) -> dict[str, Any]:
        """One round, retried or skipped by the ``short_round`` policy when short of quorum."""
        for attempt in range(self.round_retries + 1):
            saved = self._snapshot()
            try:
                return self._round(rnd, saved)
            except QuorumError as e:
                self._restore(saved)
                if self.short_round == "abort":
                    raise
                if self.short_round == "retry" and attempt < self.round_retries:
                    log.warning(
                        "%s: retrying the round (%d of %d)", e, attempt + 1, self.round_retries
                    )
                    continue
                log.warning("%s: round skipped, the model is unchanged", e)
                return self._skipped(rnd, str(e))
        raise AssertionError("not reached")

    def _round(self, rnd: int, saved: tuple[torch.Tensor, dict[str, Any]]) -> dict[str, Any]:
        tally = RoundTally()
        self._bytes_up = 0
        self._state(RoundState.START_ROUND, rnd)
        rng = sampling_rng(self.seed, "sample", rnd)
        plan = self.plan = self.strategy.configure(rnd, self.backend.available_clients(rnd), rng)
        dropped = self._straggle(rnd, plan) if self.stragglers else 0
        self._state(RoundState.DISTRIBUTE, rnd)
        self.backend.distribute(rnd, plan, self.params)
        self._state(RoundState.TRAIN, rnd)
        self.strategy.aggregate(
            rnd, self.params, self._accepted(rnd, self.backend.collect(), tally, saved[0])
        )
        self._state(RoundState.AGGREGATE, rnd)
        poisoned = self._guard_aggregate(rnd, saved, tally)
        self.round = rnd
        self._state(RoundState.CLOSE_ROUND, rnd)
        record: dict[str, Any] = {
            "round": rnd,
            **tally.counts(),
            # what the wire format sends (model and plan tensors / update extras); a backend
            # that compresses reports the encoded sizes in round_stats, which replace these
            "bytes_down": len(plan.clients) * self.download_size(rnd, plan),
            "bytes_up": self._bytes_up,
            "client_seconds": tally.client_seconds,
        }
        if poisoned:
            record["aggregate_rejected"] = poisoned
        if self.stragglers:
            record["stragglers_dropped"] = dropped
        return self._close(rnd, record, tally)

    def _close(self, rnd: int, record: dict[str, Any], tally: RoundTally) -> dict[str, Any]:
        """Add the backend's figures and the evaluation to ``record``; keep it in history."""
        record.update(self.backend.round_stats())
        record.update(self.strategy.round_record())
        if rnd % self.eval_every == 0 or rnd == self.rounds:
            record.update(self.evaluate())
        record["seconds"] = tally.seconds
        self.history.append(record)
        return record

    def _skipped(self, rnd: int, reason: str) -> dict[str, Any]:
        self.round = rnd
        record = {"round": rnd, "clients": 0, "rejected": 0, "samples": 0, "skipped": reason}
        return self._close(rnd, record, RoundTally())

    # -- rollback ------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """The global model and the strategy's state before a round (one copy of each), to
        roll back a round that is short of quorum or would poison the model."""
        return self.params.clone(), copy.deepcopy(self.strategy.state_dict())

    def _restore(self, saved: tuple[torch.Tensor, dict[str, Any]]) -> None:
        self.params.copy_(saved[0])
        self.strategy.load_state_dict(copy.deepcopy(saved[1]))

    def _guard_aggregate(
        self, rnd: int, saved: tuple[torch.Tensor, dict[str, Any]], tally: RoundTally
    ) -> str | None:
        """Roll back a non-finite aggregate (then no update of the round counts as accepted);
        the reason, naming the clients with the largest values, or None when it is sound."""
        try:
            check_finite_values(self.params, self.spec, "the aggregate")
        except WireError as e:
            self._restore(saved)
            peaks = tally.peaks
            top = sorted(peaks, key=lambda c: -peaks[c])[:3]
            named = ", ".join(f"client {c} (|sum| {peaks[c]:.3g})" for c in top)
            reason = f"{e}; round rolled back; largest values from {named or 'no client'}"
            log.error("round %d: %s", rnd, reason)
            tally.void()
            return reason
        return None

    def _straggle(self, rnd: int, plan: RoundPlan) -> int:
        """Give a share of ``plan``'s clients fewer epochs; drop them if the strategy wants
        only complete work. Returns how many were dropped."""
        rng = sampling_rng(self.seed, "stragglers", rnd)
        full = plan.round_epochs(self.task.local_epochs)
        k = round(self.stragglers * len(plan.clients))
        chosen = sorted(int(c) for c in rng.choice(plan.clients, size=k, replace=False))
        epochs = {c: int(e) for c, e in zip(chosen, rng.integers(1, full + 1, size=k))}
        short = {c for c, e in epochs.items() if e < full}
        if self.strategy.accepts_partial_work:
            plan.client_epochs = epochs
            return 0
        plan.clients = [c for c in plan.clients if c not in short]
        return len(short)

    def evaluate(self) -> dict[str, float]:
        """Server-side test of the current global model (its tensors are views of params)."""
        self.last_eval = dict(self.task.evaluate(self.model))
        return self.last_eval

    # -- updates ------------------------------------------------------------------------------
    def _accepted(
        self,
        rnd: int,
        updates: Iterable[ClientUpdate],
        tally: RoundTally,
        before: torch.Tensor | None = None,
    ) -> Iterator[ClientUpdate]:
        first = True
        for u in updates:
            if first:
                self._state(RoundState.UPLOAD, rnd)
                first = False
            self._bytes_up += self.upload_size(u)
            error = self._check(u, before, tally.peaks)
            for cb in self.callbacks:
                cb.on_update(self, u, error)
            if error:
                tally.reject()
                log.warning("round %d: rejected update of client %d: %s", rnd, u.client_id, error)
                continue
            tally.accept(u)
            yield u

    def _check(
        self,
        u: ClientUpdate,
        before: torch.Tensor | None = None,
        peaks: dict[int, float] | None = None,
    ) -> str | None:
        """Why ``u`` cannot be aggregated, or None. ``peaks`` gets the magnitude of its sum
        (Inf when finite values overflow it): the one reduction the finite check pays, which
        ranks the clients to name when an aggregate overflows."""
        if "error" in u.extras:  # refused by the backend (e.g. on arrival over the network)
            return str(u.extras["error"])
        p = u.params
        if p.numel() != self.spec.numel or p.dtype != self.spec.dtype:
            return f"buffer of {p.numel()} {p.dtype} values, expected {self.spec}"
        if u.num_samples <= 0:
            return f"num_samples must be > 0, got {u.num_samples}"
        try:
            checked_metrics(u.metrics)
        except ValueError as e:
            return str(e)
        peak = abs(float(p.sum())) if p.numel() else 0.0
        if not math.isfinite(peak):  # one reduction; only a bad or huge buffer pays the scan
            try:
                check_finite_values(p, self.spec)
            except WireError as e:
                return str(e)
        if peaks is not None:
            peaks[u.client_id] = peak
        if self.max_update_norm is not None and before is not None:
            norm = float(torch.linalg.vector_norm(p - before))
            if not norm <= self.max_update_norm:
                return f"update norm {norm:.4g} exceeds max_update_norm {self.max_update_norm}"
        return None

    def upload_size(self, u: ClientUpdate) -> int:
        """The bytes of ``u`` as the network client sends it (``encode_bundle``, meta round)."""
        extras = u.extras.get("tensors") or {}
        return self.wire_size(extras, {"round": u.round})

    def download_size(self, rnd: int, plan: RoundPlan) -> int:
        """The bytes of the round's model and plan tensors as the server publishes them."""
        return self.wire_size(plan.tensors, {"round": rnd, "version": rnd - 1})

    # -- state -------------------------------------------------------------------------------
    def _state(self, state: RoundState, rnd: int) -> None:
        for cb in self.callbacks:
            cb.on_state(self, state, rnd)

    def _target_reached(self, record: dict[str, Any]) -> bool:
        if self.target is None or self.target[0] not in record:
            return False
        name, value, *mode = self.target
        falls = mode[0] == "min" if mode else name.endswith("loss")
        return bool(record[name] <= value if falls else record[name] >= value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "seed": self.seed,
            "params": self.params.clone(),
            "strategy": self.strategy.state_dict(),
            "backend": self.backend.state_dict(),
            "history": list(self.history),
            "last_eval": dict(self.last_eval),
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise CheckpointError(
                f"checkpoint was made with seed {state['seed']}, not {self.seed}: "
                "resume with the same config, or start a fresh run"
            )
        self.params.copy_(state["params"])
        self.strategy.load_state_dict(state["strategy"])
        self.backend.load_state_dict(state["backend"])
        self.round = int(state["round"])
        self.history = list(state["history"])
        self.last_eval = dict(state["last_eval"])
        torch.set_rng_state(state["rng"]["torch"])
