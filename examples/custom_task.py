"""A task of your own: a regression with its own model, data, loss and metrics.

From a config (``examples/custom_task.toml`` names ``examples.custom_task:make_task``; run it
from the repository root, which is on the import path as ``python -m`` puts it there):

    fedloom run examples/custom_task.toml
    fedloom launch --nproc 9 examples/custom_task.toml      # an aggregator + its 8 clients
    torchrun --nproc_per_node 2 -m fedloom run examples/custom_task.toml

or from Python, as a script:

    python examples/custom_task.py
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import fedloom


class RegressionTask(fedloom.Task):
    """Clients hold noisy samples of one smooth function of ``features`` inputs,
    ``y = sin(x . w) + 0.5 x0``, each drawn from its own region of the input space (feature
    skew: client ``k``'s inputs are centred at ``k / clients``). A small MLP fits it with
    mean squared error; the server scores it on fresh samples from every region.

    The data comes from its own generator seeded with ``seed``, so every process of a run
    (aggregator, clients, torchrun ranks) builds the same clients from the same options.
    """

    def __init__(
        self,
        clients: int = 8,
        samples: int = 64,
        features: int = 4,
        hidden: int = 32,
        noise: float = 0.05,
        lr: float = 0.2,
        local_epochs: int = 3,
        batch_size: int = 16,
        seed: int = 0,
    ):
        if clients < 1 or samples < 1 or features < 1 or hidden < 1 or batch_size < 1:
            raise ValueError("clients, samples, features, hidden and batch_size must be >= 1")
        self.features, self.hidden, self.batch_size = features, hidden, batch_size
        self.lr, self.local_epochs = lr, local_epochs
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(features, generator=g)

        def draw(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(n, features, generator=g) * 0.5 + k / clients
            y = torch.sin(x @ w) + 0.5 * x[:, 0]
            return x, (y + noise * torch.randn(n, generator=g)).unsqueeze(1)

        self.data = [draw(k, samples) for k in range(clients)]
        test = [draw(k, 32) for k in range(clients)]
        self.test_x = torch.cat([x for x, _ in test])
        self.test_y = torch.cat([y for _, y in test])

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(self.features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1)
        )

    @property
    def num_clients(self) -> int:
        return len(self.data)

    def num_samples(self, client_id: int) -> int:
        return len(self.data[client_id][0])

    def train_loader(
        self, client_id: int, ctx: fedloom.ClientContext
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data[client_id]
        perm = torch.randperm(len(x), generator=ctx.generator)  # the client's own seeded draw
        for i in range(0, len(x), self.batch_size):
            rows = perm[i : i + self.batch_size]
            yield x[rows], y[rows]

    def train_step(self, model: nn.Module, batch, ctx: fedloom.ClientContext) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        pred = model(self.test_x)
        mse = F.mse_loss(pred, self.test_y).item()
        return {
            "mse": mse,
            "mae": F.l1_loss(pred, self.test_y).item(),
            "r2": 1 - mse / self.test_y.var(unbiased=False).item(),
        }


def make_task(seed: int = 0, **options) -> RegressionTask:
    """The factory a config names (``[task] factory``); ``options`` are ``[task.options]``,
    ``seed`` the run's seed."""
    return RegressionTask(seed=seed, **options)


if __name__ == "__main__":
    task = make_task(clients=8)
    fed = fedloom.Federation(task, fedloom.FedAvg(clients_per_round=4), rounds=30, seed=1)
    result = fed.run()
    print({k: round(v, 4) for k, v in result.final_metrics.items()})
