"""What a client sends back after local training."""

from __future__ import annotations

import json
import math
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


MAX_METRICS = 64
MAX_METRICS_JSON = 16 << 10


def checked_metrics(value: Any) -> dict[str, float]:
    """A client's metrics as the loop uses them: at most 64 names, each a finite number.

    Raises ValueError naming what is wrong; the update is then rejected, never half-used.
    """
    if not isinstance(value, dict):
        raise ValueError(f"metrics must be an object of numbers, got {type(value).__name__}")
    if len(value) > MAX_METRICS:
        raise ValueError(f"{len(value)} metrics; at most {MAX_METRICS} are taken")
    out: dict[str, float] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ValueError(f"metric name {str(name)[:70]!r} must be 1 to 64 characters")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"metric {name!r} must be a number, got {type(v).__name__}")
        try:
            f = float(v)
        except OverflowError:
            raise ValueError(f"metric {name!r} is too large") from None
        if not math.isfinite(f):
            raise ValueError(f"metric {name!r} is not finite ({f})")
        out[name] = f
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Metrics from a client's JSON text (at most 16 KiB; NaN and Infinity refused)."""
    if len(text) > MAX_METRICS_JSON:
        raise ValueError(f"metrics JSON of {len(text)} characters; the limit is {MAX_METRICS_JSON}")

    def refuse(name: str) -> float:
        raise ValueError(f"metrics JSON holds {name}")

    try:
        return checked_metrics(json.loads(text or "{}", parse_constant=refuse))
    except RecursionError:
        raise ValueError("metrics JSON is nested too deeply") from None
