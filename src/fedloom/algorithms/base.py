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


@dataclass
class RoundPlan:
    """The clients of a round and what they are sent besides the model.

    ``config`` is plain JSON (epochs, the client part's name and hyper-parameters, per-client
    epochs of stragglers); ``tensors`` are flat buffers laid out like the model (SCAFFOLD's
    server control variate, IFCA's cluster models) that clients read through ``ctx.tensors``.
    """

    clients: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


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


class Strategy(Stateful, ModelHooks, ABC):
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
    client: Any = None

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
        config = {"algorithm": self.client.to_config()} if self.client is not None else {}
        return RoundPlan(sorted(int(c) for c in chosen), config)

    @abstractmethod
    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        """Consume ``updates`` (a stream) and write the new global parameters.

        Writes into ``global_params`` in place and returns it. Each update's buffer is valid
        only until the next one is drawn from the stream.
        """
