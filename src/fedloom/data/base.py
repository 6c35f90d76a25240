"""The in-memory dataset every fedloom simulation works on.

Data is kept as whole tensors (never a per-sample Python object), so a client's local
training indexes one big tensor with its sample ids, exactly as a fast plain PyTorch loop does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TensorDataset:
    """A labelled dataset held as tensors.

    Attributes:
        name: short name, e.g. ``"mnist"``.
        train_x, train_y: training inputs (float32, shape ``(N, *input_shape)``) and labels
            (int64, shape ``(N,)``).
        test_x, test_y: held-out inputs and labels used for server-side evaluation.
        num_classes: number of label values.
        natural_partition: for datasets that come already split by user (LEAF FEMNIST), one
            int64 tensor of train-sample indices per client; ``None`` otherwise.
        meta: free-form facts (source file, normalisation) written to the run's report.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    natural_partition: list[torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"dataset {self.name!r}: {split} has {x.shape[0]} inputs, {y.shape[0]} labels"
                )
            if y.dtype != torch.int64:
                raise ValueError(
                    f"dataset {self.name!r}: {split} labels must be int64, got {y.dtype}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def __len__(self) -> int:
        return int(self.train_x.shape[0])
