"""Server optimisers over FedAvg's average (Reddi et al. 2021, "Adaptive Federated
Optimization", Algorithm 1 "FedOpt"): the server treats Delta_t = avg_i(x_i) - x_t as a
pseudo-gradient and feeds it to an optimiser, x_{t+1} = x_t + eta * step(Delta_t).

FedAvg is the special case step(Delta) = Delta, eta = 1. Server momentum (FedAvgM) and adaptive
steps (FedAdagrad, FedAdam, FedYogi) help where plain averaging is slow or hard to tune
(heterogeneous clients, sparse gradients), at no cost to clients or communication.
The average comes from any :class:`~fedloom.aggregation.Aggregator`, so robust aggregators
compose with every server optimiser.
"""

from __future__ import annotations

import logging
import math
import numbers
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import torch

from ..aggregation import Aggregator, WeightedMean
from ..update import ClientUpdate
from .base import Strategy
from .fedavg import combine

log = logging.getLogger("fedloom")


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) and value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_decay(name: str, value: float) -> float:
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class FedOpt(Strategy):
    """x_{t+1} = x_t + server_lr * _step(Delta_t), Delta_t = aggregate(x_i) - x_t.

    Subclasses name their state tensors and initial values in :meth:`_initial_state` and
    update them in place in :meth:`_step`. The state is allocated on the first round that
    accepts an update, never advanced by a round that accepts none, and saved in
    ``state_dict``. ``weighted`` and ``aggregator`` are FedAvg's (Reddi et al. average
    uniformly: ``weighted=False``).
    """

    def __init__(
        self,
        server_lr: float,
        *,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(clients_per_round, fraction)
        self.server_lr = check_positive("server_lr", server_lr)
        self.weighted = weighted
        self.aggregator = aggregator or WeightedMean()
        self.client = self.client or self.aggregator.client
        self._state: dict[str, torch.Tensor] = {}
        self._work: dict[str, torch.Tensor] = {}  # scratch buffers, not state
        self._steps = 0

    @property
    def eta(self) -> float:
        """The server learning rate (the paper's eta)."""
        return self.server_lr

    @property
    def steps(self) -> int:
        """Server optimiser steps taken (rounds that accepted an update)."""
        return self._steps

    @abstractmethod
    def _initial_state(self) -> dict[str, float]:
        """State tensor names and the value each starts at (e.g. ``{"m": 0.0, "v": tau**2}``)."""

    @abstractmethod
    def _step(self, delta: torch.Tensor) -> torch.Tensor:
        """Advance the state with ``delta`` (read-only) and return the step direction."""

    def _buffer(self, name: str) -> torch.Tensor:
        """A scratch buffer shaped like the parameters, allocated once."""
        if name not in self._work:
            self._work[name] = torch.empty_like(self._work["delta"])
        return self._work[name]

    def _prepare(self, like: torch.Tensor) -> None:
        delta = self._work.get("delta")
        if delta is None or (delta.shape, delta.dtype, delta.device) != (
            like.shape,
            like.dtype,
            like.device,
        ):
            self._work = {"delta": torch.empty_like(like)}
        if not self._state:
            self._state = {k: torch.full_like(like, v) for k, v in self._initial_state().items()}
        for k, t in self._state.items():
            if t.shape != like.shape:
                raise ValueError(f"server state {k!r} has shape {tuple(t.shape)}, not {like.shape}")
            if t.dtype != like.dtype or t.device != like.device:  # e.g. loaded on the CPU
                self._state[k] = t.to(like)

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        avg = combine(self.aggregator, global_params, updates, self.weighted)
        if avg is None:
            log.warning(
                "round %d: no client update was accepted; the model and the server optimiser "
                "state are unchanged",
                round,
            )
            return global_params
        self._prepare(global_params)
        delta = torch.sub(avg, global_params, out=self._work["delta"])
        direction = self._step(delta)
        self._steps += 1
        # x + eta*d written as avg - (Delta - eta*d): when eta*d == Delta (FedAvgM with no
        # momentum and server_lr 1) the model is the average bit for bit, as with FedAvg.
        delta.sub_(direction, alpha=self.server_lr)
        return torch.sub(avg, delta, out=global_params)

    def state_dict(self) -> dict[str, Any]:
        return {
            "aggregator": self.aggregator.state_dict(),
            "steps": self._steps,
            "state": {k: t.clone() for k, t in self._state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tensors = state.get("state", {})
        if tensors and set(tensors) != set(self._initial_state()):
            raise ValueError(
                f"{type(self).__name__} keeps {sorted(self._initial_state())}, "
                f"the state has {sorted(tensors)}"
            )
        self.aggregator.load_state_dict(state.get("aggregator", {}))
        self._steps = int(state.get("steps", 0))
        self._state = {k: t.detach().clone() for k, t in tensors.items()}


class AdaptiveFedOpt(FedOpt):
    """Reddi et al.'s Algorithm 2: m_t = b1 m + (1 - b1) Delta, v_t from :meth:`_update_v`,
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau), with m_{-1} = 0 and v_{-1} = tau^2.

    No bias correction, as in the paper: v_{-1} = tau^2 and tau keep the first steps bounded.
    """

    def __init__(self, server_lr: float, beta1: float, tau: float, **kwargs: Any):
        super().__init__(server_lr, **kwargs)
        self.beta1 = check_decay("beta1", beta1)
        self.tau = check_positive("tau", tau)

    def _initial_state(self) -> dict[str, float]:
        return {"m": 0.0, "v": self.tau**2}

    @abstractmethod
    def _update_v(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        """The second-moment update, in place."""

    def _step(self, delta: torch.Tensor) -> torch.Tensor:
        m, v = self._state["m"], self._state["v"]
        m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
        self._update_v(v, delta)
        d = torch.sqrt(v, out=self._buffer("direction")).add_(self.tau)
        return torch.div(m, d, out=d)
