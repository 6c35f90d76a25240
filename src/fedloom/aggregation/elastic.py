"""Elastic aggregation, OpenFed's ``ElasticAggregator`` (Chen et al. 2021, "OpenFed: A
Comprehensive and Versatile Open-Source Federated Learning Framework"; published as Chen et al.
2023, "Elastic Aggregation for Federated Optimization"), with parameter importance measured as
in Memory Aware Synapses (Aljundi et al. 2018): how much the model's output moves with a weight.

Client (client part ``"elastic"``, OpenFed's ``ElasticOptimizer.acg``): for every local batch,
``g = d mse(f(x), 0) / d theta`` (the gradient of the mean squared output; labels unused) and
``Omega <- momentum * Omega + (1 - momentum) * |g|`` from ``Omega = 0``. OpenFed runs this pass
"before the training phase" on the downloaded global model (``at="begin"``, the default);
``at="end"`` measures the trained model instead (MAS's timing). Unlike OpenFed, the pass runs in
eval mode with its own shuffling generator, so it changes neither BatchNorm statistics nor the
training's random stream: the client's training is bit-identical to FedAvg's.

Server (aggregator ``"elastic"``, OpenFed's ``ElasticOp``), with ``n_i`` the FedAvg weights::

    avg = sum_i n_i x_i / N          Omega = sum_i n_i Omega_i / N
    zeta = 1 + quantile - Omega / (max_T Omega + 1e-13)    (max over each parameter tensor T)
    x_new = x + zeta * (avg - x)

OpenFed gives the server optimiser the pseudo-gradient ``zeta * (x - avg)``: with FedAvg that is
``x_new`` above, and FedOpt strategies (FedAvgM, FedAdam...) get ``zeta * (avg - x)`` as their
delta. ``zeta`` lies in ``[quantile, 1 + quantile]``: the coordinates that matter most to the
clients' outputs move by ``quantile`` times the average update, the least by ``1 + quantile``.
Tensors that are not trainable parameters (BatchNorm statistics, frozen weights) take the plain
average, as OpenFed copies it into tensors that do not require grad. The client sends, besides
the importance, a layout buffer saying which coordinates form which tensor, because aggregators
see flat buffers only (0: not trainable; 1 and 2 alternate between consecutive tensors).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..algorithms.client import ClientAlgorithm, LocalRun, register_client_algorithm
from ..registry import register_aggregator
from ..seeding import derive_seed
from .base import Aggregator

log = logging.getLogger("fedloom")

IMPORTANCE, LAYOUT = "elastic_importance", "elastic_layout"


@register_client_algorithm
class ElasticImportance(ClientAlgorithm):
    """Measures each federated parameter's importance and returns it in ``run.out``.

    Args:
        momentum: decay of the running mean of ``|g|`` over batches (OpenFed: 0.9).
        at: ``"begin"`` (OpenFed: the downloaded model, before training) or ``"end"``.
        max_batches: batches used at most (OpenFed's ``max_acg_step``); None: the whole epoch.
    """

    name = "elastic"

    def __init__(self, momentum: float = 0.9, at: str = "begin", max_batches: int | None = None):
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if at not in ("begin", "end"):
            raise ValueError(f"at must be 'begin' or 'end', got {at!r}")
        if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 1):
            raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
        self.momentum, self.at, self.max_batches = float(momentum), at, max_batches
        self._buffers: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def begin(self, run: LocalRun) -> None:
        if self.at == "begin":
            self.measure(run)

    def end(self, run: LocalRun) -> None:
        if self.at == "end":
            self.measure(run)

    def measure(self, run: LocalRun) -> None:
        """Fill ``run.out`` with the importance of the model as it is now, and the layout."""
        model, spec = run.model, run.spec
        federated = set(spec.names)
        named = [(n, p) for n, p in model.named_parameters() if n in federated and p.requires_grad]
        imp, layout = self._reused(run, {n for n, _ in named})
        imp.zero_()
        views = [imp[spec.slice(n)].view_as(p) for n, p in named]
        params = [p for _, p in named]
        seed = derive_seed(run.ctx.generator.initial_seed(), "elastic")
        ctx = dataclasses.replace(run.ctx, generator=torch.Generator().manual_seed(seed))
        was_training = model.training
        model.eval()  # no BatchNorm statistics updated, no dropout drawn
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                for i, batch in enumerate(run.task.train_loader(ctx.client_id, ctx)):
                    if not params or (self.max_batches is not None and i >= self.max_batches):
                        break
                    out = model(batch[0] if isinstance(batch, tuple | list) else batch)
                    loss = F.mse_loss(out, torch.zeros_like(out))
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    pairs = [(v, g) for v, g in zip(views, grads) if g is not None]
                    if pairs:
                        acc, gs = map(list, zip(*pairs))
                        with torch.no_grad():
                            torch._foreach_mul_(acc, self.momentum)
                            torch._foreach_add_(
                                acc, torch._foreach_abs(gs), alpha=1 - self.momentum
                            )
        finally:
            model.train(was_training)
        run.out[IMPORTANCE], run.out[LAYOUT] = imp, layout

    def _reused(self, run: LocalRun, trainable: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """This model's importance buffer and layout, allocated once (valid until the next
        client trains, like the update's own buffer)."""
        key = (run.spec.entries, frozenset(trainable), run.flat.device)
        if key not in self._buffers:
            layout = torch.zeros_like(run.flat)
            for i, e in enumerate(run.spec.entries):
                if e.name in trainable:
                    layout[run.spec.slice(e.name)] = 1 + i % 2
            self._buffers = {key: (torch.zeros_like(run.flat), layout)}
        return self._buffers[key]


@register_aggregator("elastic")
class ElasticAggregator(Aggregator):
    """``x + zeta * (avg - x)`` with ``zeta`` from the clients' importance (see the module).

    ``reset`` must be given the round's global model (FedAvg and FedOpt do), which is read, not
    copied, in ``result``. Updates without importance (no ``"elastic"`` client part ran, e.g.
    because the strategy has a client part of its own) are skipped with a warning.

    Args:
        quantile: OpenFed's ``quantile`` (the paper's tau), in (0, 1); default 0.5.
        momentum / at / max_batches: the client part's, see :class:`ElasticImportance`.
    """

    def __init__(
        self,
        quantile: float = 0.5,
        momentum: float = 0.9,
        at: str = "begin",
        max_batches: int | None = None,
    ):
        if not (isinstance(quantile, int | float) and 0 < quantile < 1):
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        self.quantile = float(quantile)
        self.client = ElasticImportance(momentum, at, max_batches)
        self._x: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._imp: torch.Tensor | None = None
        self._runs: list[tuple[int, int, bool]] | None = None
        self._total, self._count, self._skipped = 0.0, 0, 0

    def reset(self, like: torch.Tensor) -> None:
        s = self._sum
        if s is None or (s.shape, s.dtype, s.device) != (like.shape, like.dtype, like.device):
            self._sum, self._imp = torch.zeros_like(like), torch.zeros_like(like)
            self._runs = None
        else:
            s.zero_()
            self._imp.zero_()  # type: ignore[union-attr]
        self._x = like
        self._total, self._count, self._skipped = 0.0, 0, 0

    def add(
        self, params: torch.Tensor, weight: float, extras: dict[str, Any] | None = None
    ) -> None:
        if self._sum is None or self._imp is None:
            raise RuntimeError("ElasticAggregator.add called before reset")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        tensors = (extras or {}).get("tensors") or {}
        imp = tensors.get(IMPORTANCE)
        if imp is None or imp.numel() != self._sum.numel():
            if not self._skipped:
                log.warning(
                    "elastic: an update without importance was skipped (and any more "
                    "this round); is the 'elastic' client part running?"
                )
            self._skipped += 1
            return
        if self._runs is None:
            self._runs = _runs(tensors.get(LAYOUT), self._sum.numel())
        self._sum.add_(params.reshape(self._sum.shape), alpha=weight)
        self._imp.add_(imp.reshape(self._imp.shape), alpha=weight)
        self._total += weight
        self._count += 1

    def result(self) -> torch.Tensor:
        if self._count == 0 or self._total <= 0 or self._x is None or self._runs is None:
            raise RuntimeError("ElasticAggregator.result: no update with positive weight was added")
        if self._skipped:
            log.warning("elastic: %d update(s) without importance skipped", self._skipped)
        avg = self._sum.div_(self._total).view(-1)  # type: ignore[union-attr]
        zeta = self._imp.div_(self._total).view(-1)  # type: ignore[union-attr]
        for start, stop, trainable in self._runs:
            seg = zeta[start:stop]
            if trainable:  # 1 + q - Omega / (max_T Omega + 1e-13)
                seg.div_(seg.max().add_(1e-13)).neg_().add_(1 + self.quantile)
            else:  # buffers and frozen weights: the plain average
                seg.fill_(1.0)
        x = self._x.reshape(-1)
        return avg.sub_(x).mul_(zeta).add_(x).view(self._x.shape)

    @property
    def count(self) -> int:
        return self._count


def _runs(layout: torch.Tensor | None, numel: int) -> list[tuple[int, int, bool]]:
    """``(start, stop, trainable)`` of each tensor in a layout buffer (one run without one)."""
    if layout is None:
        return [(0, numel, True)] if numel else []
    v = layout.reshape(-1)
    cuts = (torch.nonzero(v[1:] != v[:-1]).flatten() + 1).tolist()
    bounds = [0, *cuts, numel] if numel else [0]
    kinds = (v[bounds[:-1]] != 0).tolist() if numel else []
    return [(a, b, bool(k)) for a, b, k in zip(bounds[:-1], bounds[1:], kinds)]
