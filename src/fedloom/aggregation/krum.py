"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent"). Each update is scored by the sum of squared distances to its
``n - f - 2`` nearest neighbours; with at most ``f`` Byzantine clients an honest update sits in
a dense honest cluster and scores low, while an outlier far from it scores high. Krum keeps the
lowest-scoring update, Multi-Krum averages the ``m`` lowest. Whole updates are kept or dropped,
so unlike the coordinate-wise rules no aggregate mixes coordinates of different clients.
"""

from __future__ import annotations

import torch

from ..registry import register_aggregator
from .median import StackingAggregator

_CHUNK_VALUES = 1 << 22  # float64 values per Gram chunk (32 MiB)


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` squared Euclidean distances between rows, in float64.

    Sums Gram-matrix terms over column chunks, each centred first to limit cancellation, so the
    float64 copy is never larger than one chunk. Non-finite distances become ``inf``.
    """
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK_VALUES // max(n, 1))
    for start in range(0, d, step):
        c = x[:, start : start + step].to(torch.float64)
        c = c - c.mean(dim=0)
        g = c @ c.T
        sq = g.diagonal()
        out += sq[:, None] + sq[None, :] - 2 * g
    out.clamp_(min=0).fill_diagonal_(0)
    return out.nan_to_num_(nan=float("inf"), posinf=float("inf"))


@register_aggregator("krum")
class Krum(StackingAggregator):
    """Krum (``multi=1``) or Multi-Krum (``multi=m``) over the round's updates.

    Args:
        num_byzantine: ``f``, the number of Byzantine clients tolerated. Scores need
            ``n - f - 2 >= 1``; the paper's guarantee also needs ``n > 2f + 2``.
        multi: ``m``, how many lowest-scoring updates to average; ``None`` means ``n - f``.

    Multi-Krum averages the selected updates weighted by their weights (sample counts under
    a weighted FedAvg); use ``FedAvg(weighted=False)`` for the paper's plain average, since the
    counts are self-reported. With one selected update its weight is irrelevant. After
    ``result``, :attr:`scores` and :attr:`selected` (row indices in ``add`` order) say why.
    """

    def __init__(self, num_byzantine: int = 0, multi: int | None = 1) -> None:
        super().__init__()
        if num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")
        if multi is not None and multi < 1:
            raise ValueError(f"multi must be >= 1 or None, got {multi}")
        self.num_byzantine = num_byzantine
        self.multi = multi
        self.scores: torch.Tensor | None = None
        self.selected: list[int] = []

    def result(self) -> torch.Tensor:
        n, f = self.count, self.num_byzantine
        k = n - f - 2
        if k < 1:
            raise ValueError(
                f"Krum needs n - f - 2 >= 1 updates, got n={n}, f={f} (at least {f + 3} clients)"
            )
        m = n - f if self.multi is None else self.multi
        if m > n:
            raise ValueError(f"Multi-Krum: multi={m} exceeds the {n} updates of this round")
        x = self.updates
        dist = pairwise_sq_distances(x).fill_diagonal_(float("inf"))
        self.scores = torch.topk(dist, k, dim=1, largest=False).values.sum(dim=1)
        order = torch.argsort(self.scores, stable=True)[:m]
        self.selected = order.tolist()
        if m == 1:
            return self._shaped(x[self.selected[0]].clone())
        w = torch.tensor([self.weights[i] for i in self.selected], dtype=torch.float64)
        if w.sum() <= 0:
            raise RuntimeError("Multi-Krum: the selected updates all have weight 0")
        w = (w / w.sum()).to(device=x.device, dtype=x.dtype)
        return self._shaped(w @ x[order])


@register_aggregator("multi_krum")
class MultiKrum(Krum):
    """Multi-Krum: :class:`Krum` averaging the ``multi`` best updates (default ``n - f``)."""

    def __init__(self, num_byzantine: int = 0, multi: int | None = None) -> None:
        super().__init__(num_byzantine, multi)
