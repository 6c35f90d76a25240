"""q-FFL trained by q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning",
Algorithm 2).

Why: FedAvg minimises the average loss, which may leave some clients with a much worse model
than others. q-FFL minimises ``sum_k F_k^(q+1) / (q+1)`` instead: the larger ``q``, the more a
client with a high loss counts, so the spread of the clients' losses shrinks (``q = 0`` is the
average loss). q-FedAvg steps on it with a Lipschitz estimate ``L = 1 / lr`` (the client's
learning rate), from each client's trained ``w_k`` and its loss ``F_k(w^t)`` at the global model:

    dw_k = L (w^t - w_k)     Delta_k = F_k^q dw_k     h_k = q F_k^(q-1) ||dw_k||^2 + L F_k^q
    w^(t+1) = w^t - sum_k Delta_k / sum_k h_k

``dw_k`` is a gradient estimate (descent direction ``w^t - w_k``), hence the minus. As in the
official code, ``F_k + 1e-10`` is used, so ``F_k = 0`` is harmless. Computed streaming as
``w <- (1 - s) w + s m``: ``m`` is the mean of the ``w_k`` weighted by ``L F_k^q`` (one
accumulator; weights kept relative to the largest so far, so a large ``q`` cannot overflow) and
``s = sum_k L F_k^q / sum_k h_k`` in (0, 1]. With ``q = 0``, ``h_k = L`` and ``s = 1``: the
unweighted mean of the ``w_k``, i.e. ``FedAvg(weighted=False)`` (bit for bit here). The paper
samples clients in proportion to their data, which makes that unbiased for the data-weighted
objective; fedloom samples uniformly, so every client counts alike. ``||dw_k||`` runs over the
whole federated buffer (BatchNorm statistics too).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from typing import Any, TypeGuard

import torch

from ..registry import register_strategy
from ..update import ClientUpdate
from .base import Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm

log = logging.getLogger("fedloom")
LOSS, LR, EPS = "qffl_loss", "qffl_lr", 1e-10


def _size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, tuple | list) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


@register_client_algorithm
class GlobalLoss(ClientAlgorithm):
    """Reports ``F_k(w^t)`` (``metrics["qffl_loss"]``) and the optimizer's lr (``"qffl_lr"``).

    ``F_k`` is the mean of the task's ``train_step`` loss over one no-grad pass of the client's
    ``train_loader`` before training: per sample when batches are tuples of tensors, else per
    batch. The model stays in train mode, since this is the loss the client descends (dropout
    on); the pass uses its own generator (same seed) and a forked torch RNG, and buffers such as
    BatchNorm statistics are restored after it, so the training that follows is unchanged.
    """

    name = "qffl"

    def begin(self, run: LocalRun) -> None:
        task, model, g, device = run.task, run.model, run.ctx.generator, run.flat.device
        ctx = dataclasses.replace(
            run.ctx, generator=torch.Generator(g.device).manual_seed(g.initial_seed())
        )
        cuda = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
        buffers = list(model.buffers())
        saved = [b.clone() for b in buffers]
        total: torch.Tensor | float = 0.0
        count = 0
        with torch.no_grad(), torch.random.fork_rng(cuda):
            for batch in task.train_loader(ctx.client_id, ctx):
                k = _size(batch)
                total = total + task.train_step(model, batch, ctx).detach() * k
                count += k
        if buffers:
            torch._foreach_copy_(buffers, saved)
        run.metrics[LR] = run.lr
        if count:
            run.metrics[LOSS] = float(total) / count


@register_strategy("qffl")
class QFFL(Strategy):
    """q-FedAvg on the q-FFL objective.

    Args:
        q: fairness exponent, >= 0. The paper tunes it per data set from {0.001, ..., 15}
            (1 is common; 0 is unweighted FedAvg).
        lr: the learning rate ``eta`` in ``L = 1 / eta``. None (the default) takes each
            client's optimizer lr as it reports it, which is the paper's choice; a number fixes
            it (one more server step-size knob).
        clients_per_round / fraction: see :class:`Strategy`.

    Updates without a finite ``qffl_loss`` >= 0 (or, with ``lr=None``, a ``qffl_lr`` > 0)
    are skipped with a warning.
    """

    def __init__(
        self,
        q: float = 1.0,
        lr: float | None = None,
        clients_per_round: int | None = None,
        fraction: float | None = None,
    ):
        super().__init__(clients_per_round, fraction)
        if not _number(q) or q < 0:
            raise ValueError(f"q must be a finite number >= 0, got {q!r}")
        if lr is not None and (not _number(lr) or lr <= 0):
            raise ValueError(f"lr must be a finite number > 0 or None, got {lr!r}")
        self.q, self.lr = float(q), None if lr is None else float(lr)
        self.client = GlobalLoss()
        self._work: dict[str, torch.Tensor] = {}  # scratch buffers, rewritten every round

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        x, q, acc = global_params, self.q, self._scratch("acc", global_params).zero_()
        top, count = -math.inf, 0
        c_sum = h_sum = 0.0  # sum_k L F_k^q and sum_k h_k, both divided by exp(top)
        for u in updates:
            loss, lr = u.metrics.get(LOSS), self.lr or u.metrics.get(LR)
            if not (_number(loss) and loss >= 0 and _number(lr) and lr > 0):
                why = f"no valid {LOSS} ({loss!r}) or {LR} ({lr!r})"
                log.warning("round %d: update of client %d skipped: %s", round, u.client_id, why)
                continue
            f, big_l = float(loss) + EPS, 1.0 / float(lr)
            log_c = q * math.log(f) + math.log(big_l)  # log(L F_k^q)
            if log_c > top:  # weights relative to the largest so far stay <= 1: no overflow
                scale = math.exp(top - log_c)
                if count:
                    acc.mul_(scale)
                c_sum, h_sum, top = c_sum * scale, h_sum * scale, log_c
            c, ratio = math.exp(log_c - top), 1.0  # ratio: h_k / (L F_k^q)
            if q:
                diff = torch.sub(x, u.params, out=self._scratch("diff", x))
                d = float(torch.linalg.vector_norm(diff))
                ratio += q * big_l * d * d / f
            acc.add_(u.params, alpha=c)
            c_sum, h_sum, count = c_sum + c, h_sum + c * ratio, count + 1
        if count == 0:
            log.warning("round %d: no client update was accepted; the model is unchanged", round)
            return x
        s = c_sum / h_sum
        return x.mul_(1.0 - s).add_(acc.div_(c_sum), alpha=s)

    def _scratch(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like ``like``, kept across rounds (not state: rewritten each use)."""
        t = self._work.get(name)
        if t is None or (t.shape, t.dtype, t.device) != (like.shape, like.dtype, like.device):
            t = self._work[name] = torch.empty_like(like)
        return t


def _number(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
