"""AlphaMed's FedAvg tutorial task ("实现一个极简的 FedAvg 算法"), ported to fedloom.

The tutorial's ``SimpleTaskScheduler`` keeps its hooks as written there (``build_model``,
``build_optimizer``, ``build_train_dataloader``, ``build_test_dataloader``, ``state_dict``,
``load_state_dict``, ``train_an_epoch``, ``test``); what changes:

- it subclasses :class:`fedloom.adapters.alphamed.AlphaMedScheduler` (AlphaMed's
  ``SimpleFedAvgScheduler`` interface) and is run as ``AlphaMedTask(scheduler)``; fedloom's
  round loop does the check-in, distribution, aggregation and the final test the tutorial's
  scheduler does;
- data: every process reads the same embedded 5,000-digit MNIST and
  ``build_train_dataloader`` picks data holder ``self.client_id``'s share (in AlphaMed each node
  reads its own ``get_dataset_dir``); ``test`` still reports through ``self.tb_writer``;
- ``train_an_epoch`` returns the epoch's mean loss so fedloom records ``train_loss``;
- the model stays on the CPU (fedloom places it; the tutorial picks CUDA when present).

From a config (``examples/alphamed_task.toml``; run from the repository root):

    fedloom run examples/alphamed_task.toml

or as a script: ``python examples/alphamed_task.py``.
"""

from __future__ import annotations

import logging
from time import time

import torch
import torch.nn.functional as F
from torch.nn import Conv2d, Dropout2d, Linear, Module
from torch.optim import SGD, Optimizer
from torch.utils.data import DataLoader, TensorDataset

import fedloom
from fedloom.adapters.alphamed import AlphaMedScheduler, AlphaMedTask

logger = logging.getLogger("alphamed_task")


class ConvNet(Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels=1, out_channels=10, kernel_size=5)
        self.conv2 = Conv2d(in_channels=10, out_channels=20, kernel_size=5)
        self.conv2_drop = Dropout2d()
        self.fc1 = Linear(in_features=320, out_features=50)
        self.fc2 = Linear(in_features=50, out_features=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=-1)


class SimpleTaskScheduler(AlphaMedScheduler):
    def __init__(
        self,
        clients: int,
        rounds: int,
        batch_size: int,
        learning_rate: float,
        momentum: float,
        samples: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(clients=clients, rounds=rounds)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum

        self.device = torch.device("cpu")
        self.seed = seed
        torch.manual_seed(self.seed)
        data = fedloom.load_mnist5k(seed=seed)
        n = len(data) if samples is None else min(samples, len(data))
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
        self._train = (data.train_x[order], data.train_y[order])
        self._test = (data.test_x, data.test_y)

    def build_model(self) -> Module:
        model = ConvNet()
        return model.to(self.device)

    def build_optimizer(self, model: Module) -> Optimizer:
        assert self.model, "must initialize model first"
        return SGD(self.model.parameters(), lr=self.learning_rate, momentum=self.momentum)

    def build_train_dataloader(self) -> DataLoader:
        assert self.client_id is not None, "a data holder's loader"
        x, y = self._train
        mine = slice(self.client_id, None, self.clients)  # this data holder's share
        return DataLoader(TensorDataset(x[mine], y[mine]), batch_size=self.batch_size, shuffle=True)

    def build_test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self._test), batch_size=self.batch_size, shuffle=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)

    def train_an_epoch(self) -> float:
        self.model.train()
        total, steps = 0.0, 0
        for data, labels in self.train_loader:
            data, labels = data.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            output = self.model(data)
            loss = F.nll_loss(output, labels)
            loss.backward()
            self.optimizer.step()
            total, steps = total + loss.item(), steps + 1
        return total / max(steps, 1)

    def test(self) -> None:
        start = time()
        self.model.eval()
        test_loss = 0.0
        correct = 0
        with torch.no_grad():
            for data, labels in self.test_loader:
                data, labels = data.to(self.device), labels.to(self.device)
                output: torch.Tensor = self.model(data)
                test_loss += F.nll_loss(output, labels, reduction="sum").item()
                pred = output.max(1, keepdim=True)[1]
                correct += pred.eq(labels.view_as(pred)).sum().item()

        test_loss /= len(self.test_loader.dataset)
        accuracy = correct / len(self.test_loader.dataset)
        correct_rate = 100.0 * accuracy
        logger.info(f"Test set: Average loss: {test_loss:.4f}")
        logger.info(f"Test set: Accuracy: {accuracy} ({correct_rate:.2f}%)")

        end = time()

        self.tb_writer.add_scalar("timer/run_time", end - start, self.round)
        self.tb_writer.add_scalar("test_results/average_loss", test_loss, self.round)
        self.tb_writer.add_scalar("test_results/accuracy", accuracy, self.round)
        self.tb_writer.add_scalar("test_results/correct_rate", correct_rate, self.round)


def make_task(
    clients: int = 2,
    rounds: int = 5,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    samples: int | None = None,
    seed: int = 42,
) -> AlphaMedTask:
    """The factory ``[task] factory`` names: the tutorial's scheduler, behind the adapter."""
    scheduler = SimpleTaskScheduler(
        clients=clients,
        rounds=rounds,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        samples=samples,
        seed=seed,
    )
    return AlphaMedTask(scheduler)


if __name__ == "__main__":
    task = make_task()
    fed = fedloom.Federation(task, fedloom.FedAvg(), rounds=5, seed=42)
    print({k: round(v, 4) for k, v in fed.run().final_metrics.items()})
