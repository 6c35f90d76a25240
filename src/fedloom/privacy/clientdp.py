"""What local DP and DP-SGD share: a client part that wraps the strategy's own, a per-client
accountant kept in the client's state, and the stage that puts the part in every plan.

A client-side DP part runs *around* the strategy's client part (FedProx's proximal term),
named in the plan as ``{"name": "local_dp", ..., "inner": {"name": "fedprox", "mu": 0.01}}``.
Only inner parts that send nothing but the model may be wrapped: anything else they send
(SCAFFOLD's ``delta_c``, FedNova's step norm, q-FFL's losses) would leave the client neither
clipped nor noised, so :meth:`ClientDPStage.check` refuses them, naming the keys.

The accountant's state is plain numbers in ``ctx.state[<part>]``, so the engine keeps it
across rounds and checkpoints it; its (q, z) runs are kept merged and sorted (composition
commutes), so the state stays a few entries however many rounds a client takes part in.

Where the noise comes from: without ``noise_seed`` (the simulation, the trusted single-party
case) from (run seed, round, client), so a run is reproducible from its seed. With
``noise_seed`` (what a deployed client sets, :mod:`fedloom.privacy.clientnoise`; never the
aggregator) from a keyed BLAKE2b of (part, round, client) under that seed: the run seed
plays no part, so an aggregator, which chose the run seed, cannot regenerate the noise.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, ClassVar

import torch

from ..algorithms.base import RoundPlan, Strategy
from ..algorithms.client import ClientAlgorithm, LocalRun, build_client_algorithm
from ..registry import STRATEGIES
from ..seeding import derive_seed
from ..stages import Stage
from ..update import ClientUpdate
from .accountant import Accountant, Method, check_delta, check_noise
from .clipping import check_clip_norm
from .compat import registered_name

# client parts that send nothing but the model: safe to run inside a client-side DP part
WRAPPABLE = ("fedprox", "local_dp", "dpsgd")


def check_inner(inner: dict[str, Any] | None, mode: str) -> dict[str, Any] | None:
    """``inner`` if a client-side DP part may wrap it, else ValueError naming the keys."""
    if inner is None:
        return None
    if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
        raise ValueError(f"inner must be a client part's config {{'name': ...}}, got {inner!r}")
    if inner["name"] not in WRAPPABLE:
        raise ValueError(
            f"privacy.mode = {mode!r} cannot be combined with a strategy whose client part is "
            f"{inner['name']!r}: it sends tensors or figures of its own (control variates, "
            f"step norms, losses) that would leave the client neither clipped nor noised; "
            f"client parts that can be wrapped: {', '.join(WRAPPABLE)}"
        )
    return dict(inner)


def check_noise_seed(seed: int | None) -> int | None:
    """``seed`` if it is None or an int in [0, 2**63), else ValueError naming it."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"noise_seed must be an integer, got {seed!r}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"noise_seed must be in [0, 2**63), got {seed}")
    return seed


def keyed_seed(secret: int, purpose: str, round: int, client_id: int) -> int:
    """A 63-bit seed for (``purpose``, round, client) under ``secret``: a keyed BLAKE2b, so
    seeds of other rounds reveal nothing of ``secret`` or of each other."""
    key = secret.to_bytes(8, "little")
    digest = hashlib.blake2b(f"{purpose}/{round}/{client_id}".encode(), key=key, digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class _PerThread(threading.local):
    """One accountant per thread: a part instance serves every client of a process."""

    def __init__(self) -> None:
        self.accountants: dict[tuple[float, str], Accountant] = {}


class ClientDPPart(ClientAlgorithm):
    """Base of the client-side DP parts: the inner part, the accountant, the noise source.

    Subclasses set ``name``, ``metric`` (the epsilon's key in the update's metrics) and call
    :meth:`account` with the round's (q, z, count) runs in their ``end``."""

    metric: ClassVar[str] = ""
    mode: ClassVar[str] = ""  # privacy.mode, for messages

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        accountant: Method,
        inner: dict[str, Any] | None,
        noise_seed: int | None = None,
    ):
        self.noise_multiplier = check_noise("noise_multiplier", noise_multiplier)
        self.noise_seed = check_noise_seed(noise_seed)
        self.clip_norm = check_clip_norm(clip_norm)
        self.delta = check_delta(delta)
        if accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
        self.accountant: Method = accountant
        self.inner = check_inner(inner, self.mode)
        options = dict(self.inner or {})
        self._inner = build_client_algorithm(options.pop("name", None), options)
        self._local = _PerThread()

    def noise_generator(self, run: LocalRun) -> torch.Generator:
        """A CPU generator for this client's round: from ``noise_seed`` when the part has one
        (a deployed client's own), else from (run seed, round, client) as the engine seeds."""
        if self.noise_seed is None:
            seed = derive_seed(run.ctx.generator.initial_seed(), self.name)
        else:
            seed = keyed_seed(self.noise_seed, self.name, run.ctx.round, run.ctx.client_id)
        return torch.Generator().manual_seed(seed)

    def begin(self, run: LocalRun) -> None:
        if self._inner is not None:
            self._inner.begin(run)

    def end(self, run: LocalRun) -> None:
        if self._inner is not None:
            self._inner.end(run)
        if run.out:
            raise ValueError(
                f"{self.name}: the client part {self.inner} sent tensors {sorted(run.out)} "
                "that would leave the client neither clipped nor noised"
            )

    def _accountant(self) -> Accountant:
        key = (self.delta, self.accountant)
        acc = self._local.accountants.get(key)
        if acc is None:
            acc = self._local.accountants[key] = Accountant(self.delta, self.accountant)
        return acc

    def account(self, run: LocalRun, spent: list[tuple[float, float, int]]) -> float:
        """Add ``spent`` = [(q, z, count)] to the client's accountant in ``ctx.state``,
        report epsilon (when noised) in the metrics, and return it."""
        own = run.ctx.state.setdefault(self.name, {})
        counts: dict[tuple[float, float], int] = {}
        for q, z, n in [*own.get("runs", []), *spent]:
            counts[(float(q), float(z))] = counts.get((float(q), float(z)), 0) + int(n)
        own["runs"] = [[q, z, n] for (q, z), n in sorted(counts.items()) if n > 0]
        own["participations"] = int(own.get("participations", 0)) + 1
        acc = self._accountant()
        acc.load_state_dict({"delta": self.delta, "runs": own["runs"]})
        eps = acc.epsilon()
        own["epsilon"] = eps
        run.metrics[f"{self.metric}_participations"] = float(own["participations"])
        if self.noise_multiplier > 0:
            run.metrics[self.metric] = eps
        return eps


class ClientDPStage(Stage):
    """Puts a client-side DP part, wrapping the strategy's own, in every round's plan and
    records the largest epsilon the round's clients reported."""

    key = "privacy"
    part: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    mode: ClassVar[str] = ""

    def __init__(self) -> None:
        self._largest: float | None = None
        self._missing = 0

    def options(self) -> dict[str, Any]:
        """The part's keyword arguments, without ``inner``."""
        raise NotImplementedError

    def check(self, strategy: Strategy) -> None:
        if strategy.client is None:
            return
        config = strategy.client.to_config()
        try:
            check_inner(config, self.mode)
        except ValueError as e:
            name = registered_name(STRATEGIES, strategy)
            raise ValueError(f"strategy.name = {name!r}: {e}") from None

    def configure(self, round: int, plan: RoundPlan, available: int) -> None:
        del round, available
        inner = (
            None
            if plan.client_algorithm is None
            else {"name": plan.client_algorithm, **plan.client_options}
        )
        check_inner(inner, self.mode)
        plan.client_algorithm, plan.client_options = self.part, {**self.options(), "inner": inner}
        self._largest, self._missing = None, 0

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        del round, global_params
        eps = update.metrics.get(self.metric)
        if eps is None:
            self._missing += int(self.options()["noise_multiplier"] > 0)
        else:
            self._largest = max(float(eps), self._largest or 0.0)
        return update

    def round_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self._largest is not None:
            record[f"{self.metric}_max"] = self._largest
        if self._missing:
            record[f"{self.metric}_missing"] = self._missing
        return record
