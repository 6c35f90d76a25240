"""A ready supervised classification task: a model plus a partitioned :class:`TensorDataset`.

Data stays in the dataset's tensors, on the task's device. A client's epoch gathers its
shuffled samples once (one indexing op) and yields views of that gathered block as batches,
which is as cheap as batching a tensor can be; there is no DataLoader, no per-sample Python
object, and on a GPU no per-batch copy from the host: the epoch's permutation (drawn on the
CPU, so every device shuffles alike) goes over once, asynchronously from pinned memory.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import optim
from .accel.device import resolve_device
from .accel.precision import PRECISIONS
from .data.base import TensorDataset
from .data.partition.base import Partitioner
from .seeding import derive_seed
from .task import ClientContext, Task

OPTIMIZERS = {"sgd", "adam"}


class ClassificationTask(Task):
    """Train ``model_fn()`` on ``dataset`` split into ``parts`` (one index array per client).

    Args:
        model_fn: builds a fresh model (called once per process).
        dataset: the tensors; ``dataset.test_*`` is used for server-side evaluation.
        parts: per-client train-sample ids, or a :class:`Partitioner` to split the train set
            with (seeded by ``seed``), so a model and a dataset are enough.
        lr, momentum, weight_decay, optimizer: the client optimizer ("sgd" or "adam").
        batch_size: local mini-batch size.
        local_epochs: local epochs per round.
        eval_batch_size: batch size of the server-side test.
        device: where training and evaluation run: ``"auto"`` (CUDA if there is a GPU),
            ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (:func:`fedloom.accel.resolve_device`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of local training
            (:class:`fedloom.accel.MixedPrecision`); evaluation runs in float32.
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        dataset: TensorDataset,
        parts: Sequence[np.ndarray | torch.Tensor] | Partitioner,
        *,
        seed: int = 0,
        lr: float = 0.01,
        batch_size: int = 10,
        local_epochs: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        optimizer: str = "sgd",
        eval_batch_size: int = 1000,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if isinstance(parts, Partitioner):
            parts = parts(dataset.train_y.numpy(), derive_seed(seed, "partition"))
        if not parts:
            raise ValueError("parts is empty: at least one client is needed")
        self.model_fn = model_fn
        self.dataset = dataset
        self.device = resolve_device(device)
        self.mixed_precision = precision
        self.parts = [torch.as_tensor(np.asarray(p), dtype=torch.int64) for p in parts]
        for cid, p in enumerate(self.parts):
            if len(p) == 0:
                raise ValueError(f"client {cid} has no training samples")
        self.lr, self.batch_size, self.local_epochs = lr, batch_size, local_epochs
        self.momentum, self.weight_decay, self.optimizer = momentum, weight_decay, optimizer
        self.eval_batch_size = eval_batch_size
        self._place()

    def _place(self) -> None:
        self._x = self.dataset.train_x.to(self.device)
        self._y = self.dataset.train_y.to(self.device)
        self._test_x = self.dataset.test_x.to(self.device)
        self._test_y = self.dataset.test_y.to(self.device)

    def to(self, device: str | torch.device) -> ClassificationTask:
        """This task with its data on ``device`` (a shallow copy; ``self`` if already there):
        a worker process of a pool moves it to its own GPU."""
        device = resolve_device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.device = device
        moved._place()
        return moved

    def build_model(self) -> nn.Module:
        return self.model_fn().to(self.device)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """torch's SGD or Adam, as :mod:`fedloom.optim` builds them (no torch._dynamo import)."""
        if self.optimizer == "adam":
            return optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return optim.SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    @property
    def num_clients(self) -> int:
        return len(self.parts)

    def num_samples(self, client_id: int) -> int:
        return len(self.parts[client_id])

    def train_loader(
        self, client_id: int, ctx: ClientContext
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.parts[client_id]
        perm = torch.randperm(len(idx), generator=ctx.generator)
        order = idx[perm]
        if self.device.type == "cuda":  # no wait for the queued kernels, unlike a plain copy
            order = order.pin_memory().to(self.device, non_blocking=True)
        else:
            order = order.to(self.device)
        x, y = self._x[order], self._y[order]
        b = self.batch_size
        for i in range(0, len(order), b):
            yield x[i : i + b], y[i : i + b]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        n = len(self._test_y)
        for i in range(0, n, self.eval_batch_size):
            x, y = (
                self._test_x[i : i + self.eval_batch_size],
                self._test_y[i : i + self.eval_batch_size],
            )
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
        model.train(was_training)
        return {"accuracy": float(correct) / max(n, 1), "test_loss": float(loss) / max(n, 1)}

    def describe(self) -> dict[str, Any]:
        sizes = [len(p) for p in self.parts]
        return {
            "task": type(self).__name__,
            "dataset": self.dataset.name,
            "num_clients": self.num_clients,
            "train_samples": sum(sizes),
            "test_samples": len(self._test_y),
            "samples_per_client": {"min": min(sizes), "max": max(sizes)},
        }
