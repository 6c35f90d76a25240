"""Ditto (Li, Hu, Beirami and Smith 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization").

Ditto solves two problems at once. The global model ``w`` is trained exactly as FedAvg trains
it: the update a client returns is its plain local update, so the server side *is* FedAvg.
Besides, every client k keeps a personal model ``v_k`` and, after its global local work, takes
personal steps on

    h_k(v; w^t) = F_k(v) + lambda/2 * ||v - w^t||^2,

where ``w^t`` is the global model the round started from (``run.global_flat``), not the
client's trained copy (the paper's Algorithm 1). The term's gradient ``lambda * (v - w^t)`` is
added to the user's gradients before every step of a fresh optimizer from
``task.build_optimizer`` (the sign pulls ``v`` towards ``w^t``). ``lambda = 0`` gives purely
local models; a large ``lambda`` gives (nearly) the global model.

``v_k`` lives in the client's ``ctx.state["ditto"]`` (so checkpoints hold it), initialised to
``w^t`` at the client's first round. Cost: one ``v_k`` per client that took part, and while
``v_k`` trains in the model's buffer the trained global update waits in one scratch buffer
reused across clients (a single flat copy, not a model).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..aggregation import Aggregator
from ..registry import register_strategy
from ..task import Task
from .client import ClientAlgorithm, LocalRun, local_epochs, register_client_algorithm
from .fedavg import FedAvg

KEY = "ditto"


@register_client_algorithm
class DittoPersonal(ClientAlgorithm):
    """After the global local work, train ``ctx.state["ditto"]`` on the proximal objective."""

    name = "ditto"

    def __init__(self, lam: float, personal_epochs: int | None = None):
        if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if personal_epochs is not None and not (
            isinstance(personal_epochs, int) and personal_epochs >= 1
        ):
            raise ValueError(
                f"personal_epochs must be None or an int >= 1, got {personal_epochs!r}"
            )
        self.lam = float(lam)
        self.personal_epochs = personal_epochs
        self._scratch: torch.Tensor | None = None

    def end(self, run: LocalRun) -> None:
        ctx, task = run.ctx, run.task
        epochs = self.personal_epochs or local_epochs(ctx.config, ctx.client_id, task.local_epochs)
        saved = self._scratch
        if saved is None or (saved.shape, saved.dtype, saved.device) != (
            run.flat.shape,
            run.flat.dtype,
            run.flat.device,
        ):
            saved = self._scratch = torch.empty_like(run.flat)
        saved.copy_(run.flat)  # the trained global update, sent back unchanged
        v = ctx.state.get(KEY)
        run.flat.copy_(run.global_flat if v is None else v)
        optimizer = task.build_optimizer(run.model)
        handle = optimizer.register_step_pre_hook(self._proximal(run)) if self.lam else None
        loss, steps = 0.0, 0
        try:
            for _ in range(epochs):
                m = task.train_an_epoch(run.model, optimizer, ctx)
                loss += float(m.get("loss", 0.0)) * int(m.get("steps", 1))
                steps += int(m.get("steps", 1))
        finally:
            if handle is not None:
                handle.remove()
        if v is None:
            ctx.state[KEY] = run.flat.detach().clone()
        else:
            v.copy_(run.flat)
        run.flat.copy_(saved)
        run.metrics["personal_loss"] = loss / max(steps, 1)

    def _proximal(self, run: LocalRun) -> Any:
        lam, by_param = self.lam, dict(zip(map(id, run.params), run.global_params))

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            pairs = [(p.grad, p) for p in run.params if p.grad is not None]
            if pairs:
                grads, params = map(list, zip(*pairs))
                with torch.no_grad():
                    anchors = [by_param[id(p)] for p in params]
                    torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=lam)

        return hook


@register_strategy("ditto")
class Ditto(FedAvg):
    """FedAvg for the global model plus a personal model per client (see the module doc).

    Args:
        lam: weight lambda of the proximal term of the personal objective. The paper tunes it
            from {0.01, 0.1, 1, 2}; 0.1 by default.
        personal_epochs: local epochs of personal training per round; None: the epochs the
            client ran for the global model this round (the round's, or a straggler's own).
        clients_per_round / fraction / weighted / aggregator: as :class:`FedAvg`.

    The personal model covers the whole federated buffer, so the task must not have
    ``personal_layers``. :meth:`client_model` gives a client's ``v_k`` for evaluation.
    """

    def __init__(
        self,
        lam: float = 0.1,
        personal_epochs: int | None = None,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(clients_per_round, fraction, weighted, aggregator)
        self.client = DittoPersonal(lam, personal_epochs)
        self.lam, self.personal_epochs = self.client.lam, personal_epochs

    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        """Called by :class:`~fedloom.Federation` before the model is flattened."""
        if task.personal_layers:
            raise ValueError(
                f"Ditto keeps a whole personal model per client; the task's personal_layers "
                f"{tuple(task.personal_layers)} would be trained by both phases: remove them"
            )

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        """Client ``cid``'s personal model ``v_k`` from its backend state, or None if it never
        took part (it would start from the global model)."""
        return state.get(KEY)
