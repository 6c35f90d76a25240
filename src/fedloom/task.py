"""The user's task: the hooks AlphaMed and FedLab users know, around their own PyTorch code.

Subclass :class:`Task` and fill in ``build_model``, ``num_clients``, ``num_samples``,
``train_loader`` and ``evaluate``; the defaults of ``build_optimizer``, ``train_step`` and
``train_an_epoch`` are the plain PyTorch loop. fedloom never owns your model's forward pass:
it hands your hooks the model, the optimizer and a :class:`ClientContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import optim
from .accel.precision import MixedPrecision


@dataclass
class ClientContext:
    """What a client's training knows about where it is.

    Attributes:
        client_id: the client being trained.
        round: the current round (1-based).
        generator: a ``torch.Generator`` seeded from (run seed, round, client); use it for
            shuffling so results do not depend on which process trains the client.
        state: this client's persistent state. Anything stored here (tensors, numbers, nested
            dicts/lists of them) survives between rounds and is saved in checkpoints.
        config: per-round settings from the strategy (e.g. ``local_epochs``).
        global_params: the flat global parameters this round started from (read-only); used by
            client-side algorithm parts such as a proximal term.
        tensors: flat buffers the strategy sent with the model (read-only), by name.
        amp: the run's mixed precision (``train.precision``): a loop of your own runs its
            forward pass in ``with ctx.amp.autocast():`` and calls ``ctx.amp.backward(loss)``
            and ``ctx.amp.step(optimizer)``, as the default ``train_an_epoch`` does.
    """

    client_id: int
    round: int
    generator: torch.Generator
    state: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    global_params: torch.Tensor | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    amp: MixedPrecision = field(default_factory=MixedPrecision)


class Task(ABC):
    """A federated learning task. Subclass it; the hooks are called by every fedloom engine.

    Class attributes a subclass may set:
        local_epochs: local epochs per round (a strategy may override per round).
        lr: learning rate of the default SGD optimizer.
        personal_layers: name prefixes of parameters that stay on each client and are never
            aggregated (FedPer-style personal heads). fedloom keeps them per client.
        keep_optimizer_state: keep each client's optimizer state (e.g. momentum buffers) between
            rounds instead of starting fresh.
        mixed_precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast the engines give
            the local training through ``ctx.amp`` (``train.precision`` in a config; not
            ``precision``, a name a task may well use for its metric).
    """

    local_epochs: int = 1
    lr: float = 0.01
    personal_layers: tuple[str, ...] = ()
    keep_optimizer_state: bool = False
    mixed_precision: str = "fp32"

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model. Called once per process; fedloom reuses it for every client."""

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The client's optimizer, built once per client per round (as the plain loop does).

        The default is ``torch.optim.SGD`` as :class:`fedloom.optim.SGD` (torch's SGD without the
        ~1.6 s ``torch._dynamo`` import of torch 2.13's first optimizer call); any optimizer works.
        """
        return optim.SGD(model.parameters(), lr=self.lr)

    @property
    @abstractmethod
    def num_clients(self) -> int:
        """How many clients (data holders) the task has."""

    @abstractmethod
    def num_samples(self, client_id: int) -> int:
        """Training samples of ``client_id``: the weight of its update."""

    @abstractmethod
    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterable[Any]:
        """One epoch of training batches for ``client_id``; shuffle with ``ctx.generator``."""

    def train_step(self, model: nn.Module, batch: Any, ctx: ClientContext) -> torch.Tensor:
        """Forward pass and loss of one batch. The default is classification cross-entropy."""
        x, y = batch
        return F.cross_entropy(model(x), y)

    def train_an_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: ClientContext
    ) -> dict[str, float]:
        """One local epoch; returns ``{"loss": mean batch loss, "steps": batches}``.

        The loss is summed as a tensor on the loss's own device and read once per epoch, so
        the loop pays no per-batch synchronisation the plain PyTorch loop would not pay.
        The forward pass runs under ``ctx.amp``'s autocast (nothing for fp32).
        """
        amp = ctx.amp
        total: torch.Tensor | None = None
        steps = 0
        for batch in self.train_loader(ctx.client_id, ctx):
            optimizer.zero_grad(set_to_none=True)
            with amp.autocast():
                loss = self.train_step(model, batch, ctx)
            amp.backward(loss)
            amp.step(optimizer)
            if total is None:
                total = torch.zeros((), dtype=torch.float32, device=loss.device)
            total += loss.detach()
            steps += 1
        return {"loss": float(total) / steps if total is not None else 0.0, "steps": steps}

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Server-side test of the global model, e.g. ``{"accuracy": .., "test_loss": ..}``."""

    def describe(self) -> dict[str, Any]:
        """Facts about the task written to the run's report."""
        return {"task": type(self).__name__, "num_clients": self.num_clients}
