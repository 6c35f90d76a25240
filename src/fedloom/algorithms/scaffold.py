"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning").

Client drift under heterogeneous data is corrected with control variates: the server keeps
``c`` (an estimate of the global gradient), client ``i`` keeps ``c_i`` (of its own). Every local
step follows Algorithm 1, line 10, ``y <- y - eta_l (g_i(y) - c_i + c)``: ``c - c_i`` is added
to the user's gradients before each optimizer step. After ``K`` steps the client refreshes
``c_i`` (line 12) with Option I, the gradient of its loss at the global ``x`` over its local
data, or Option II (the paper's experiments), ``c_i - c + (x - y_i) / (K eta_l)``, and sends
``delta_c = c_i+ - c_i`` back. The server (line 17) takes ``x <- x + eta_g mean(y_i - x)`` over
the round's clients and ``c <- c + (1/N) sum delta_c_i``, ``N`` being *all* clients.

Conventions: ``c`` travels with the plan as ``plan.tensors["scaffold_c"]``, a flat buffer laid
out like the model; before the first aggregation the server does not know the model's size
and sends ``plan.config["scaffold_c_zero"] = True`` instead (``c = 0``). Corrections touch
trainable federated parameters only: the entries of float buffers (BatchNorm statistics) and
frozen parameters stay zero in ``c``, ``c_i`` and ``delta_c``. ``eta_l`` is the optimizer's
learning rate at the end of training, ``K`` the number of optimizer steps taken. Option I's
gradient is the mean of one pass's batch gradients (the full gradient when batches are of
equal size), taken in train mode with the buffers restored afterwards.

Memory: each client that has trained keeps one model-sized ``c_i`` in its backend state
(``ctx.state["scaffold_ci"]``, checkpointed); the server keeps ``c`` and one sum buffer.
``ProcessPoolClients`` carries no tensors either way and refuses SCAFFOLD (round 1: the worker
refuses the client's ``delta_c``; later rounds: the plan's ``c``). A client whose backend does
not carry plan tensors trains without correction and sends no ``delta_c``; the server rejects
such updates with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..aggregation import WeightedMean
from ..registry import register_strategy
from ..seeding import derive_seed
from ..update import ClientUpdate
from .base import RoundPlan, Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm

log = logging.getLogger("fedloom")


def _slices(run: LocalRun) -> list[slice]:
    """Flat-buffer slices of ``run.params`` (the trainable federated parameters), in order."""
    names = set(run.spec.names)
    return [
        run.spec.slice(n) for n, p in run.model.named_parameters() if n in names and p.requires_grad
    ]


def _views(run: LocalRun, flat: torch.Tensor) -> list[torch.Tensor]:
    return [flat[s].view_as(p) for s, p in zip(_slices(run), run.params)]


class _PerThread(threading.local):
    """Each thread's own scratch tensors, by name (``__init__`` runs once per thread)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}


@register_client_algorithm
class ControlVariates(ClientAlgorithm):
    """SCAFFOLD's client part: ``c - c_i`` added to every step's gradients, ``c_i`` refreshed
    and ``delta_c`` returned as ``run.out["scaffold_dc"]`` (a buffer reused across clients,
    valid until the next client of the thread trains, as the update's own buffer is)."""

    name = "scaffold"

    def __init__(self, option: str = "II"):
        if option not in ("I", "II"):
            raise ValueError(f"option must be 'I' or 'II' (Algorithm 1, line 12), got {option!r}")
        self.option = option
        # One instance serves every client of a process, some at once (network clients in
        # threads): the reused buffers are per thread. dc: c - c_i while training, then
        # delta_c; g: Option I's gradient at the global model.
        self._buffers = _PerThread()

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        old = self._buffers.tensors.get(name)
        if old is None or old.shape != like.shape or old.dtype != like.dtype:
            old = self._buffers.tensors[name] = torch.zeros_like(like)
        return old

    def _server_c(self, run: LocalRun) -> tuple[bool, torch.Tensor | None]:
        """(whether ``c`` reached this client, ``c`` or None for zeros)."""
        c = run.tensors.get("scaffold_c")
        return c is not None or bool(run.ctx.config.get("scaffold_c_zero")), c

    def begin(self, run: LocalRun) -> None:
        came, c = self._server_c(run)
        if not came:
            log.warning(
                "client %d: no SCAFFOLD control variate came with the plan (this backend does "
                "not carry plan tensors); training without correction",
                run.ctx.client_id,
            )
            return
        ci = run.ctx.state.get("scaffold_ci")
        if ci is None:
            ci = run.ctx.state["scaffold_ci"] = torch.zeros_like(run.flat)
        dc = self._buffer("dc", run.flat)
        if c is not None:
            torch.sub(c, ci, out=dc)
        else:
            torch.neg(ci, out=dc)
        if self.option == "I":
            self._full_gradient(run, self._buffer("g", run.flat))
        by_param = dict(zip(map(id, run.params), _views(run, dc)))

        def correct(grads: list[torch.Tensor], params: list[torch.Tensor]) -> None:
            torch._foreach_add_(grads, [by_param[id(p)] for p in params])

        run.correct_gradients(correct)

    def _full_gradient(self, run: LocalRun, out: torch.Tensor) -> None:
        """Option I: mean batch gradient of one pass at the global model, written into ``out``.
        Own generator and forked RNG: the training shuffle and dropout are not disturbed."""
        seed = derive_seed(run.ctx.generator.initial_seed(), "scaffold")
        ctx = dataclasses.replace(run.ctx, generator=torch.Generator().manual_seed(seed))
        run.model.zero_grad(set_to_none=True)
        batches = 0
        with torch.random.fork_rng(devices=[]):
            for batch in run.task.train_loader(ctx.client_id, ctx):
                torch.autograd.backward(run.task.train_step(run.model, batch, ctx))
                batches += 1
        with torch.no_grad():
            out.zero_()
            for view, p in zip(_views(run, out), run.params):
                if p.grad is not None:
                    view.copy_(p.grad).div_(max(batches, 1))
            run.model.zero_grad(set_to_none=True)
            run.flat.copy_(run.global_flat)  # undo train-mode buffer updates (BatchNorm)

    def end(self, run: LocalRun) -> None:
        came, c = self._server_c(run)
        if not came:
            return
        dc = self._buffer("dc", run.flat)
        ci = run.ctx.state["scaffold_ci"]
        with torch.no_grad():
            dc.zero_()
            if self.option == "I":
                torch.sub(self._buffer("g", run.flat), ci, out=dc)
            elif run.steps > 0:  # Option II: (x - y_i) / (K eta_l) - c, parameters only
                diffs = torch._foreach_sub(run.global_params, run.params)
                torch._foreach_mul_(diffs, 1.0 / (run.steps * run.lr))
                if c is not None:
                    torch._foreach_sub_(diffs, _views(run, c))
                torch._foreach_copy_(_views(run, dc), diffs)
            ci.add_(dc)
        run.out["scaffold_dc"] = dc


@register_strategy("scaffold")
class Scaffold(Strategy):
    """SCAFFOLD's server: model and control variate ``c`` updated from the round's clients.

    Args:
        server_lr: the global step size ``eta_g`` (the paper's experiments use 1).
        option: "II" (the paper's experiments: cheap, from the local steps) or "I" (one extra
            pass over the client's data at the global model to compute its gradient).
        weighted: average ``y_i - x`` by sample count instead of uniformly (the paper averages
            uniformly over the sampled clients; the ``c`` update is always ``(1/N) sum``).
        clients_per_round / fraction: see :class:`Strategy`.
    """

    def __init__(
        self,
        server_lr: float = 1.0,
        option: str = "II",
        weighted: bool = False,
        clients_per_round: int | None = None,
        fraction: float | None = None,
    ):
        super().__init__(clients_per_round, fraction)
        if not (isinstance(server_lr, int | float) and math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr must be a finite number > 0, got {server_lr!r}")
        self.client = ControlVariates(option)
        self.server_lr, self.option, self.weighted = float(server_lr), option, weighted
        self.c: torch.Tensor | None = None  # the server control variate (None: all zeros)
        self.num_clients: int | None = None  # N, from the last configure
        self._mean, self._dc_sum = WeightedMean(), torch.zeros(0)

    def configure(
        self, round: int, available: Sequence[int], rng: np.random.Generator
    ) -> RoundPlan:
        plan = super().configure(round, available, rng)
        self.num_clients = len(available)
        if self.c is not None:
            plan.tensors["scaffold_c"] = self.c
        else:  # the model's size is known from the first aggregation on: c = 0 until then
            plan.config["scaffold_c_zero"] = True
        return plan

    def aggregate(
        self, round: int, global_params: torch.Tensor, updates: Iterable[ClientUpdate]
    ) -> torch.Tensor:
        if not self.num_clients:
            raise RuntimeError("Scaffold.aggregate needs configure first (for N, the clients)")
        if self.c is None:
            self.c = torch.zeros_like(global_params)
        if self._dc_sum.shape != global_params.shape:
            self._dc_sum = torch.zeros_like(global_params)
        self._dc_sum.zero_()
        self._mean.reset(global_params)
        for u in updates:  # c changes only after the stream: clients still training read it
            dc = u.extras.get("tensors", {}).get("scaffold_dc")
            if dc is None or dc.shape != global_params.shape:
                log.warning(
                    "round %d: SCAFFOLD rejected the update of client %d: %s",
                    round,
                    u.client_id,
                    "no control-variate change (scaffold_dc) came with it"
                    if dc is None
                    else f"scaffold_dc has shape {tuple(dc.shape)}",
                )
                continue
            self._mean.add(u.params, float(u.num_samples) if self.weighted else 1.0)
            self._dc_sum.add_(dc)
        if self._mean.count == 0:
            log.warning("round %d: no client update was accepted; the model is unchanged", round)
            return global_params
        y = self._mean.result()
        if self.server_lr == 1.0:
            global_params.copy_(y)
        else:
            global_params.add_(y.sub_(global_params), alpha=self.server_lr)
        self.c.add_(self._dc_sum, alpha=1.0 / self.num_clients)
        return global_params

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.num_clients is not None:
            state["num_clients"] = self.num_clients
        if self.c is not None:
            state["c"] = self.c.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_clients = state.get("num_clients")
        self.c = state["c"].clone() if "c" in state else None
