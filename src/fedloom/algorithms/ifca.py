"""IFCA (Ghosh, Chung, Yin and Ramchandran 2020, "An Efficient Framework for Clustered
Federated Learning"), the model-averaging variant.

The server keeps k cluster models theta_1..theta_k and sends all of them to each sampled
client (``plan.tensors["ifca_0"..]``). The client estimates its cluster identity as the model
with the lowest loss on its local data, ``j = argmin_j F_i(theta_j)`` (a no-grad pass in eval
mode with a copy of its context and generator, so its training draws are untouched; ties go
to the lower index), trains that model for its local epochs and reports ``j`` as the metric
``cluster``. The server averages, per cluster, the updates of the clients that chose it
(weighted by samples; one streaming accumulator per cluster); a cluster nobody chose keeps
its model.

Initialisation (deterministic from the run seed): theta_0 is the Federation's initial model
and theta_j (j >= 1) is it plus ``init_noise * N(0, 1)`` on the trainable parameters (never on
buffers such as BatchNorm statistics). The Federation's own ``params`` (the model it
evaluates) become the cluster model chosen by most samples this round. Costs k models plus k
accumulators on the server, k downloads and k loss passes per client. ``plan.tensors`` must
be carried by the backend (the in-process simulation does).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..aggregation import WeightedMean
from ..params import ParamSpec
from ..registry import register_strategy
from ..seeding import derive_seed
from ..task import Task
from ..update import ClientUpdate
from .base import RoundPlan, Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm

log = logging.getLogger("fedloom")


def initial_models(task: Task, model: nn.Module, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k copies of ``model``'s federated flat buffer as a (k, n) tensor, a 0/1 mask of the
    positions holding trainable parameters)."""
    spec = ParamSpec.from_module(model, task.personal_layers)
    state = model.state_dict()
    flat = spec.flatten({n: state[n] for n in spec.names})
    mask = torch.zeros_like(flat)
    for name, p in model.named_parameters():
        if name in spec.names and p.requires_grad:
            mask[spec.slice(name)] = 1
    return flat.repeat(k, 1), mask


def check_clusters(clusters: Any) -> int:
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be an int >= 1, got {clusters!r}")
    return clusters


@register_client_algorithm
class ClusterChoice(ClientAlgorithm):
    """Start from the cluster model with the lowest local loss; report it as ``cluster``."""

    name = "ifca"

    def __init__(self, clusters: int):
        self.clusters = check_clusters(clusters)

    def begin(self, run: LocalRun) -> None:
        models = [run.tensors[f"ifca_{j}"] for j in range(self.clusters)]
        losses = [self._loss(run, m) for m in models] if len(models) > 1 else [0.0]
        best = min(range(len(losses)), key=losses.__getitem__)
        run.flat.copy_(models[best])
        run.metrics["cluster"] = float(best)

    @staticmethod
    @torch.no_grad()
    def _loss(run: LocalRun, flat: torch.Tensor) -> float:
        run.flat.copy_(flat)
        generator = torch.Generator(run.ctx.generator.device)
        generator.set_state(run.ctx.generator.get_state())
        ctx = dataclasses.replace(run.ctx, generator=generator)
        was_training = run.model.training
        run.model.eval()
        total, batches = torch.zeros((), dtype=torch.float64), 0
        for batch in run.task.train_loader(ctx.client_id, ctx):
            total += run.task.train_step(run.model, batch, ctx).detach().double().cpu()
            batches += 1
        run.model.train(was_training)
        return float(total) / max(batches, 1)


class ClusterModels(Strategy):
    """What clustered strategies share: k models (``models``, k x numel) and each client's
    cluster (``assignments``), both part of ``state_dict``. Subclasses set ``clusters``."""

    clusters: int
    models: torch.Tensor | None = None
    assignments: dict[int, int]

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": None if self.models is None else self.models.clone(),
            "assignments": {str(c): j for c, j in self.assignments.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        models = state.get("models")
        if models is not None and models.shape[0] != self.clusters:
            raise ValueError(f"checkpoint holds {models.shape[0]} models, not {self.clusters}")
        self.models = None if models is None else models.clone()
        self.assignments = {int(c): int(j) for c, j in state.get("assignments", {}).items()}


@register_strategy("ifca")
class IFCA(ClusterModels):
    """Iterative Federated Clustering (see the module doc).

    Args:
        clusters: k, the number of cluster models (the paper's experiments use 2 to 4).
        init_noise: standard deviation of the Gaussian perturbation that makes clusters
            1..k-1 differ from the initial model (0.01 by default; larger separates faster).
        clients_per_round / fraction: see :class:`Strategy`.
        weighted: weight each cluster's average by sample count (as FedAvg) or uniformly.
    """

    def __init__(
        self,
        clusters: int = 2,
        init_noise: float = 0.01,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
    ):
        super().__init__(clients_per_round, fraction)
        ok = isinstance(init_noise, int | float) and math.isfinite(init_noise)
        if not ok or init_noise < 0:
            raise ValueError(f"init_noise must be a finite number >= 0, got {init_noise!r}")
        self.clusters = check_clusters(clusters)
        self.init_noise, self.weighted = float(init_noise), weighted
        self.client = ClusterChoice(self.clusters)
        self.models: torch.Tensor | None = None  # (k, n)
        self.assignments: dict[int, int] = {}
        self._means = [WeightedMean() for _ in range(self.clusters)]

    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        """Make the k cluster models (called by the Federation with the initial model)."""
        models, mask = initial_models(task, model, self.clusters)
        gen = torch.Generator().manual_seed(derive_seed(seed, "ifca-init"))
        for j in range(1, self.clusters):
            noise = torch.randn(models.shape[1], generator=gen, dtype=models.dtype)
            models[j].add_(noise.to(models.device) * mask, alpha=self.init_noise)
        self.models = models

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        if self.models is None:
            raise RuntimeError("IFCA has no cluster models: run it in a Federation (prepare)")
        plan = super().configure(round, available, rng)
        plan.tensors = {f"ifca_{j}": self.models[j] for j in range(self.clusters)}
        return plan

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        assert self.models is not None
        for m in self._means:
            m.reset(global_params)
        chosen = [0.0] * self.clusters
        for u in updates:
            j = self._cluster_of(u)
            if j is None:
                log.warning(
                    "round %d: client %d sent no valid cluster (%r); update skipped",
                    round,
                    u.client_id,
                    u.metrics.get("cluster"),
                )
                continue
            self._means[j].add(u.params, float(u.num_samples) if self.weighted else 1.0)
            self.assignments[u.client_id] = j
            chosen[j] += u.num_samples
        if not any(chosen):
            log.warning("round %d: no client update was accepted; the models are unchanged", round)
            return global_params
        for j, mean in enumerate(self._means):
            if mean.count:
                self.models[j].copy_(mean.result())
        return global_params.copy_(self.models[max(range(self.clusters), key=chosen.__getitem__)])

    def _cluster_of(self, u: ClientUpdate) -> int | None:
        j = u.metrics.get("cluster")
        ok = isinstance(j, int | float) and math.isfinite(j) and j == int(j)
        return int(j) if ok and 0 <= int(j) < self.clusters else None  # type: ignore[arg-type]

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        """The model of the cluster ``cid`` chose last, or None if it never took part."""
        j = self.assignments.get(cid)
        return None if j is None or self.models is None else self.models[j]
