"""A task small enough to train by hand: one weight, full-batch steps, squared error.

Client k holds points (x, y); its loss is mean(0.5 * (w * x - y)^2), so one local epoch is one
plain SGD step ``w -= lr * mean(x * (w * x - y))``. Tests of the algorithms compute the expected
numbers from the papers' formulas with Python floats and compare them with fedloom's runs.

Everything is float64, as Python floats are, so runs agree with the hand-worked numbers to
rounding: each step is a few correctly rounded operations done in another order than by hand
(a few eps64 = 1.1e-16, relative), and a step w -= lr * (a w - b) with |1 - lr a| < 1 does not
amplify earlier errors, so ~100 steps stay within 1e-13 relative: ``REL = 1e-12``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from fedloom import Task
from fedloom.task import ClientContext

REL = 1e-12  # relative tolerance against the hand-worked numbers (see above)


class QuadraticTask(Task):
    def __init__(self, data: Sequence[Sequence[tuple[float, float]]], lr: float = 0.1, w0=0.0):
        self.data = [
            (
                torch.tensor([[x] for x, _ in pts], dtype=torch.float64),
                torch.tensor([[y] for _, y in pts], dtype=torch.float64),
            )
            for pts in data
        ]
        self.lr, self.w0, self.local_epochs = lr, w0, 1

    def build_model(self) -> nn.Module:
        m = nn.Linear(1, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            m.weight.fill_(self.w0)
        return m

    @property
    def num_clients(self) -> int:
        return len(self.data)

    def num_samples(self, client_id: int) -> int:
        return len(self.data[client_id][0])

    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterator:
        yield self.data[client_id]  # one full batch: one step per epoch

    def train_step(self, model: nn.Module, batch, ctx: ClientContext) -> torch.Tensor:
        x, y = batch
        return 0.5 * ((model(x) - y) ** 2).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"w": float(model.weight.detach())}


def grad(w: float, pts: Sequence[tuple[float, float]]) -> float:
    """d/dw of mean(0.5 (w x - y)^2): the hand-worked gradient."""
    return sum(x * (w * x - y) for x, y in pts) / len(pts)


def sgd(w: float, pts, lr: float, steps: int, extra=lambda w: 0.0) -> float:
    """``steps`` plain SGD steps by hand, with ``extra(w)`` added to each gradient."""
    for _ in range(steps):
        w -= lr * (grad(w, pts) + extra(w))
    return w
