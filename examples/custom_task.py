"""A task of your own in a few lines: your model, your data, your training step.

python examples/custom_task.py
"""

from __future__ import annotations

import torch
from torch import nn

import fedloom


class LinearRegressionTask(fedloom.Task):
    """Each client holds noisy samples of y = 3x - 1 with its own input range."""

    lr = 0.1
    local_epochs = 2

    def __init__(self, clients: int = 8, samples: int = 64):
        g = torch.Generator().manual_seed(0)
        self.data = []
        for k in range(clients):
            x = torch.rand(samples, 1, generator=g) + k / clients
            y = 3 * x - 1 + 0.05 * torch.randn(samples, 1, generator=g)
            self.data.append((x, y))

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    @property
    def num_clients(self) -> int:
        return len(self.data)

    def num_samples(self, client_id: int) -> int:
        return len(self.data[client_id][0])

    def train_loader(self, client_id: int, ctx: fedloom.ClientContext):
        x, y = self.data[client_id]
        perm = torch.randperm(len(x), generator=ctx.generator)
        for i in range(0, len(x), 16):
            yield x[perm[i : i + 16]], y[perm[i : i + 16]]

    def train_step(self, model, batch, ctx):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        w, b = model.weight.item(), model.bias.item()
        return {"weight": w, "bias": b, "test_loss": (w - 3) ** 2 + (b + 1) ** 2}


if __name__ == "__main__":
    task = LinearRegressionTask()
    fed = fedloom.Federation(task, fedloom.FedAvg(clients_per_round=4), rounds=30, seed=1)
    result = fed.run()
    print({k: round(v, 3) for k, v in result.final_metrics.items()})
