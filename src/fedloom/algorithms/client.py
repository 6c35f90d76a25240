"""The client-side part of a strategy: hooks around the user's own training loop.

Algorithms such as FedProx, SCAFFOLD, FedNova or FedDyn change what a client computes, not
only how the server combines it. fedloom never owns the user's loop (``Task.train_an_epoch``);
like Opacus, it wraps the user's optimizer instead: a :class:`ClientAlgorithm` may add a
gradient correction that runs just before every ``optimizer.step()`` (a step pre-hook), read
how many steps were taken, and add metrics or tensors to the update.

A strategy names its client part in the round's plan (``plan.client_algorithm`` and its
``client_options``, plain JSON on the wire), so the same part is built wherever the client
trains: in this process, in a worker process or on another machine. Per-client state lives
in ``ctx.state`` and is checkpointed with the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..params import ParamSpec
from ..registry import Registry
from ..task import ClientContext, Task

CLIENT_ALGORITHMS: Registry[type[ClientAlgorithm]] = Registry("client algorithm")


def register_client_algorithm(cls: type[ClientAlgorithm]) -> type[ClientAlgorithm]:
    """Class decorator: make ``cls`` buildable from ``{"name": cls.name, **hyper-params}``."""
    CLIENT_ALGORITHMS.register(cls.name, cls)
    return cls


@dataclass
class LocalRun:
    """One client's local training as a client part sees it.

    ``params`` are the model's trainable parameters that are federated (personal layers
    excluded), in spec order; ``global_params`` are views of the round's global buffer shaped
    like them. ``flat``/``global_flat`` are the whole flat buffers (the model's parameters and
    buffers are views of ``flat``). ``steps`` counts optimizer steps taken so far.
    """

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ctx: ClientContext
    spec: ParamSpec
    flat: torch.Tensor
    global_flat: torch.Tensor
    params: list[torch.Tensor]
    global_params: list[torch.Tensor]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # from the server
    metrics: dict[str, float] = field(default_factory=dict)  # added to the update's metrics
    out: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors sent back
    steps: int = 0
    _handles: list[Any] = field(default_factory=list)

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def correct_gradients(
        self, fn: Callable[[list[torch.Tensor], list[torch.Tensor]], None]
    ) -> None:
        """Call ``fn(grads, params)`` before every optimizer step, to change the gradients in
        place (e.g. ``torch._foreach_add_``). Parameters without a gradient are skipped."""

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            pairs = [(g, p) for p in self.params if (g := p.grad) is not None]
            if pairs:
                with torch.no_grad():
                    fn([g for g, _ in pairs], [p for _, p in pairs])

        self._handles.append(self.optimizer.register_step_pre_hook(hook))

    def on_close(self, handle: Any) -> None:
        """Remove ``handle`` (a hook's ``RemovableHandle``) when the run closes: a part's own
        hooks on the model or the optimizer live no longer than the local training."""
        self._handles.append(handle)

    def _count_steps(self) -> None:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.steps += 1

        self._handles.append(self.optimizer.register_step_post_hook(hook))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class ClientAlgorithm:
    """Base of client parts. Subclasses set ``name``, take JSON-able hyper-parameters in
    ``__init__`` (checked there, with a clear ``ValueError``) and override the hooks."""

    name: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **hyper-parameters}``: what the strategy puts in the round config."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def begin(self, run: LocalRun) -> None:
        """Before the first local epoch (the model holds the global parameters)."""

    def end(self, run: LocalRun) -> None:
        """After the last local epoch (the model holds the client's trained parameters)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


_built: dict[str, ClientAlgorithm] = {}


def local_epochs(config: dict[str, Any], cid: int, default: int) -> int:
    """Epochs ``cid`` runs this round, read from a plan's wire JSON (``ctx.config``): a
    straggler's own count, else the round's, else ``default``."""
    own = config.get("client_epochs", {}).get(str(cid))
    return int(own if own is not None else config.get("local_epochs", default))


def build_client_algorithm(name: str | None, options: dict[str, Any]) -> ClientAlgorithm | None:
    """The registered client part ``name`` with ``options``, or None (one per distinct pair)."""
    if not name:
        return None
    key = repr((name, sorted(options.items())))
    if key not in _built:
        _built[key] = CLIENT_ALGORITHMS.get(name)(**options)
    return _built[key]


def client_algorithm(config: dict[str, Any]) -> ClientAlgorithm | None:
    """The client part a plan's wire JSON names (``config["algorithm"]``), or None."""
    options = dict(config.get("algorithm") or {})
    return build_client_algorithm(options.pop("name", None), options)


def federated_parameters(
    model: nn.Module, spec: ParamSpec, global_flat: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(trainable federated parameters, views of ``global_flat`` shaped like them)."""
    names = set(spec.names)
    params: list[torch.Tensor] = []
    views: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if name in names and p.requires_grad:
            params.append(p)
            views.append(global_flat[spec.slice(name)].view_as(p))
    return params, views
