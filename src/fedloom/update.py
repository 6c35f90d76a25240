"""What a client sends back after local training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClientUpdate:
    """One client's result for one round.

    ``params`` is the client's flat parameter buffer laid out by the run's ``ParamSpec``. In a
    simulation it is the shared worker model's buffer, valid only until the next update is
    drawn: a strategy that needs it later must copy it (streaming aggregation never does).
    """

    client_id: int
    params: torch.Tensor
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    round: int = 0
    version: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
