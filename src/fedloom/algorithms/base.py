"""The strategy protocol: which clients train, with what settings, and how updates combine.

A strategy is a small object like a ``torch.optim`` optimizer: hyper-parameters checked in
``__init__``, two verbs (``configure`` and ``aggregate``) and ``state_dict``/``load_state_dict``
so checkpoints and resume work for every strategy without special cases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..task import Task
from ..update import ClientUpdate
from .client import ClientAlgorithm

# the wire JSON's keys for the loop-level fields; an algorithm's own ``config`` keys are others
WIRE_KEYS = ("local_epochs", "client_epochs", "algorithm")


@dataclass
class RoundPlan:
    """The clients of a round and what they are sent besides the model.

    Attributes:
        clients: the round's clients, sorted.
        config: the strategy's own plain-JSON data for its client part, under keys named after
            the algorithm (k-means' ``km_assignment``, SCAFFOLD's ``scaffold_c_zero``); never
            one of :data:`WIRE_KEYS`.
        tensors: flat buffers laid out like the model (SCAFFOLD's server control variate,
            IFCA's cluster models) that clients read through ``ctx.tensors``.
        local_epochs: epochs every client runs this round; None: the task's own.
        client_epochs: a straggler's own epoch count, by client id (overrides the above).
        client_algorithm: the registered name of the client part clients run, or None.
        client_options: that part's hyper-parameters (its ``__init__`` keyword arguments).

    On the wire (to network clients, and as ``ctx.config``) a plan's settings are one flat
    JSON object, :meth:`to_wire`: ``config``'s keys plus ``local_epochs``, ``client_epochs``
    (string client ids) and ``algorithm`` (``{"name": ..., **options}``) when set.
    """

    clients: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    local_epochs: int | None = None
    client_epochs: dict[int, int] = field(default_factory=dict)
    client_algorithm: str | None = None
    client_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Wire keys given in ``config`` (``RoundPlan(ids, {"local_epochs": 2})``, as before
        the typed fields) move to their fields."""
        if set(self.config) & set(WIRE_KEYS):
            lifted = RoundPlan.from_wire(self.config)
            self.config = lifted.config
            self.local_epochs = lifted.local_epochs
            self.client_epochs = {**lifted.client_epochs, **self.client_epochs}
            if lifted.client_algorithm is not None and self.client_algorithm is None:
                self.client_algorithm, self.client_options = (
                    lifted.client_algorithm,
                    lifted.client_options,
                )

    def epochs_for(self, cid: int, default: int) -> int:
        """Epochs ``cid`` runs: a straggler's own count, else the round's, else ``default``."""
        own = self.client_epochs.get(cid)
        return own if own is not None else self.round_epochs(default)

    def round_epochs(self, default: int) -> int:
        """Epochs the round asks of every client (stragglers aside), else ``default``."""
        return self.local_epochs if self.local_epochs is not None else default

    def to_wire(self) -> dict[str, Any]:
        """The settings as one plain-JSON object (what clients get as ``ctx.config``)."""
        clash = sorted(set(self.config) & set(WIRE_KEYS))
        if clash:
            raise ValueError(
                f"plan.config holds {clash}: set the plan's typed fields (local_epochs, "
                "client_epochs, client_algorithm) instead"
            )
        wire = dict(self.config)
        if self.local_epochs is not None:
            wire["local_epochs"] = self.local_epochs
        if self.client_epochs:
            wire["client_epochs"] = {str(c): e for c, e in self.client_epochs.items()}
        if self.client_algorithm is not None:
            wire["algorithm"] = {"name": self.client_algorithm, **self.client_options}
        return wire

    @classmethod
    def from_wire(
        cls,
        wire: dict[str, Any],
        clients: Sequence[int] = (),
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> RoundPlan:
        """The plan :meth:`to_wire` described (for ``clients``, with ``tensors``)."""
        config = dict(wire)
        epochs = config.pop("local_epochs", None)
        own = config.pop("client_epochs", None) or {}
        options = dict(config.pop("algorithm", None) or {})
        name = options.pop("name", None)
        return cls(
            list(clients),
            config,
            dict(tensors or {}),
            None if epochs is None else int(epochs),
            {int(c): int(e) for c, e in own.items()},
            None if name is None else str(name),
            options,
        )

    @property
    def for_clients(self) -> bool:
        """Whether the plan carries settings or tensors for training clients."""
        return bool(self.to_wire() or self.tensors)


class Stateful:
    """``state_dict``/``load_state_dict`` (stateless by default) and a readable repr."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; tensors, numbers, strings, lists and dicts only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ModelHooks:
    """Hooks a strategy may override; the defaults do nothing, so callers need not probe.

    ``prepare(task, model, seed)`` gets the freshly built model before it is flattened
    (FedPer names the task's personal layers; IFCA and clustered FL make their cluster
    models). ``client_model(cid, state)`` is the flat model client ``cid`` ends with (a
    cluster's model, Ditto's personal one), or None for the global model."""

    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        del task, model, seed

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        del cid, state
        return None

    @property
    def prepares_model(self) -> bool:
        """Whether this strategy overrides :meth:`prepare` (then it shapes the model)."""
        return type(self).prepare is not ModelHooks.prepare


class RunHooks:
    """What a strategy tells the round loop besides the model; the defaults say nothing.

    ``round_record()`` adds figures to each round's record (``metrics.jsonl``), e.g. the
    epsilon a privacy stage has spent; ``stop_reason()`` is asked before every round and
    stops the run when it returns a reason (a privacy budget that the next round would
    exceed)."""

    def round_record(self) -> dict[str, Any]:
        """Figures of the last round for its record (a privacy stage's epsilon); none here."""
        return {}

    def stop_reason(self) -> str | None:
        """Why the run must stop before its next round (a spent privacy budget), or None."""
        return None


class Strategy(Stateful, ModelHooks, RunHooks, ABC):
    """Base class of every strategy.

    Args:
        clients_per_round: clients sampled each round (exclusive with ``fraction``).
        fraction: share of the available clients sampled each round (at least one).

    Class attributes:
        accepts_partial_work: updates of stragglers (clients that ran fewer local epochs than
            asked) are aggregated; when False (FedAvg, as its paper does) they are dropped.
        client: the client-side part (:class:`~fedloom.algorithms.client.ClientAlgorithm`)
            named in every round's config, or None.
    """

    accepts_partial_work: bool = False
    client: ClientAlgorithm | None = None

    def __init__(self, clients_per_round: int | None = None, fraction: float | None = None):
        if clients_per_round is not None and fraction is not None:
            raise ValueError("give clients_per_round or fraction, not both")
        if clients_per_round is not None and clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1, got {clients_per_round}")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.clients_per_round = clients_per_round
        self.fraction = fraction if clients_per_round is None else None
        if self.fraction is None and clients_per_round is None:
            self.fraction = 1.0

    def cohort_size(self, available: int) -> int:
        if self.clients_per_round is not None:
            return min(self.clients_per_round, available)
        return max(1, min(available, int(self.fraction * available + 0.5)))  # type: ignore[operator]

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        """Sample this round's clients (sorted, so accumulation order is deterministic)."""
        k = self.cohort_size(len(available))
        chosen = rng.choice(np.asarray(available), size=k, replace=False)
        plan = RoundPlan(sorted(int(c) for c in chosen))
        if self.client is not None:
            options = self.client.to_config()
            plan.client_algorithm, plan.client_options = str(options.pop("name")), options
        return plan

    @abstractmethod
    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        """Consume ``updates`` (a stream) and write the new global parameters.

        Writes into ``global_params`` in place and returns it. Each update's buffer is valid
        only until the next one is drawn from the stream.
        """
