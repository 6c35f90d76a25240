"""Clustered FL by k-means on what clients send back (the asmallbit project's clustered FL;
its config key ``k`` is fedloom's ``strategy.clusters``).

The server keeps k models. Each sampled client trains from the model of its current cluster
(all clients start in cluster 0, the initial model); the plan carries the k models as
``plan.tensors["km_0"..]`` and each client's cluster in ``plan.config["km_assignment"]``. The
server then clusters the round's trained models ``y_i`` (by default, as asmallbit clusters its
clients' state dicts; ``cluster_on="updates"`` clusters ``delta_i = y_i - x_{a_i}``, trained
model minus the model the client started from) with k-means: k-means++ seeding from the
round's sampling generator, then at most ``iterations`` Lloyd steps (Euclidean distance;
points unweighted; an empty cluster keeps its centre). Each k-means group is matched to one
of the k model slots, greedily by the sample weight of its members that came from that slot
(so slots keep their meaning between rounds; in round one the largest group keeps slot 0),
its members are assigned to that slot and the slot's model becomes the weighted average of
their trained models ``y_i``. Slots no group matched keep their model. The Federation's own
``params`` become the model of the slot with most samples this round.

The two choices: in round one both are the same (every client started from
one model); later, clustering updates groups clients by where they are going, clustering models
by where they are. Updates shrink as the clusters converge, and once they are as small as
their noise k-means splits them arbitrarily and mixes clusters; the models stay apart. Unlike
asmallbit, the k models themselves are not clustered with the clients and only sampled clients
move. Memory: the round's updates are held at once, in one (clients x parameters) buffer
reused across rounds, plus the k models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import register_strategy
from ..task import Task
from ..update import ClientUpdate
from .base import RoundPlan
from .client import ClientAlgorithm, LocalRun, register_client_algorithm
from .ifca import ClusterModels, check_clusters, initial_models

log = logging.getLogger("fedloom")


def kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, iterations: int = 10) -> list[int]:
    """Labels in [0, min(k, len(x))) of the rows of ``x``: k-means++ then Lloyd steps."""
    m, k = x.shape[0], min(k, x.shape[0])

    def dist(c: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist")

    first = int(rng.integers(m))
    picks, d2 = [first], dist(x[first : first + 1])[:, 0].double().square().cpu().numpy()
    for _ in range(1, k):
        total = d2.sum()
        pick = int(rng.choice(m, p=d2 / total)) if total > 0 else int(rng.integers(m))
        picks.append(pick)
        d2 = np.minimum(d2, dist(x[pick : pick + 1])[:, 0].double().square().cpu().numpy())
    centres = x[picks].clone()
    labels = dist(centres).argmin(1)  # ties: the lowest index
    for _ in range(iterations):
        for j in range(k):
            members = labels == j
            if bool(members.any()):
                centres[j] = x[members].mean(0)
        new = dist(centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels.tolist()


def match(labels: list[int], came_from: list[int], weights: list[float], k: int) -> dict[int, int]:
    """Group -> model slot, one to one, greedily by the weight of members from each slot."""
    overlap: dict[tuple[int, int], float] = {}
    for g, a, w in zip(labels, came_from, weights):
        overlap[g, a] = overlap.get((g, a), 0.0) + w
    out: dict[int, int] = {}
    for (g, a), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if g not in out and a not in out.values():
            out[g] = a
    free = iter(s for s in range(k) if s not in out.values())
    for g in sorted(set(labels) - set(out)):
        out[g] = next(free)
    return out


@register_client_algorithm
class ClusterStart(ClientAlgorithm):
    """Start training from the model of the client's cluster (``plan.config``)."""

    name = "kmeans"

    def begin(self, run: LocalRun) -> None:
        slot = int(run.ctx.config["km_assignment"][str(run.ctx.client_id)])
        run.flat.copy_(run.tensors[f"km_{slot}"])


@register_strategy("clustered")
class KMeansClustered(ClusterModels):
    """k models, clients clustered by k-means on their trained models (see the module doc).

    Args:
        clusters: k (asmallbit's ``k``), the number of models.
        iterations: most Lloyd iterations per round (stops early once labels are stable).
        cluster_on: "models" (``y_i``, the default) or "updates" (``y_i - x_{a_i}``).
        clients_per_round / fraction: see :class:`Strategy`.
        weighted: weight each cluster's average by sample count (as FedAvg) or uniformly.
    """

    def __init__(
        self,
        clusters: int = 2,
        iterations: int = 10,
        cluster_on: str = "models",
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
    ):
        super().__init__(clients_per_round, fraction)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        if cluster_on not in ("updates", "models"):
            raise ValueError(f'cluster_on must be "updates" or "models", got {cluster_on!r}')
        self.clusters, self.iterations = check_clusters(clusters), iterations
        self.cluster_on = cluster_on
        self.weighted = weighted
        self.client = ClusterStart()
        self.models: torch.Tensor | None = None  # (k, n)
        self.assignments: dict[int, int] = {}
        self._buf: torch.Tensor | None = None  # the round's updates, one row each
        self._rng: np.random.Generator | None = None
        self._cohort = 1

    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        """Start every cluster at the initial model (called by the Federation)."""
        self.models = initial_models(task, model, self.clusters)[0]

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        if self.models is None:
            raise RuntimeError("KMeansClustered has no models: run it in a Federation (prepare)")
        plan = super().configure(round, available, rng)
        plan.config["km_assignment"] = {str(c): self.assignments.get(c, 0) for c in plan.clients}
        plan.tensors = {f"km_{j}": self.models[j] for j in range(self.clusters)}
        self._rng = np.random.default_rng(int(rng.integers(2**63)))  # from the run seed
        self._cohort = len(plan.clients)
        return plan

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        assert self.models is not None
        ids: list[int] = []
        weights: list[float] = []
        came_from: list[int] = []
        for u in updates:
            a = self.assignments.get(u.client_id, 0)
            row = self._row(len(ids), u.params)
            if self.cluster_on == "models":
                row.copy_(u.params)
            else:
                torch.sub(u.params, self.models[a], out=row)
            ids.append(u.client_id)
            weights.append(float(u.num_samples) if self.weighted else 1.0)
            came_from.append(a)
        if not ids:
            log.warning("round %d: no client update was accepted; the models are unchanged", round)
            return global_params
        assert self._buf is not None
        x = self._buf[: len(ids)]
        rng = self._rng if self._rng is not None else np.random.default_rng(round)
        labels = kmeans(x, self.clusters, rng, self.iterations)
        slot_of = match(labels, came_from, weights, self.clusters)
        if self.cluster_on == "updates":  # deltas back to trained models y_i
            for i, a in enumerate(came_from):
                x[i].add_(self.models[a])
        mass = [0.0] * self.clusters
        for g, s in slot_of.items():
            rows = [i for i, label in enumerate(labels) if label == g]
            target = self.models[s].zero_()
            for i in rows:
                target.add_(x[i], alpha=weights[i])
                self.assignments[ids[i]] = s
            mass[s] = sum(weights[i] for i in rows)
            target.div_(mass[s])
        self._rng = None
        return global_params.copy_(self.models[max(range(self.clusters), key=mass.__getitem__)])

    def _row(self, i: int, like: torch.Tensor) -> torch.Tensor:
        buf = self._buf
        if buf is None or buf.shape[1:] != like.shape or buf.dtype != like.dtype:
            buf = torch.empty(0, like.numel(), dtype=like.dtype, device=like.device)
        if i >= buf.shape[0]:
            rows = max(2 * buf.shape[0], i + 1, self._cohort)  # the cohort at once
            grown = torch.empty(rows, like.numel(), dtype=like.dtype, device=like.device)
            grown[: buf.shape[0]] = buf
            buf = grown
        self._buf = buf
        return buf[i]

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        """The model of ``cid``'s cluster (cluster 0 for clients that never took part)."""
        return None if self.models is None else self.models[self.assignments.get(cid, 0)]


register_strategy("kmeans", KMeansClustered)
