"""A strategy's client part in the user's own loop: the engine's hooks on the user's optimizer.

FedProx, SCAFFOLD, FedNova, FedDyn and clustered FL change what a client computes; the
built-in engine runs their client part (:mod:`fedloom.algorithms.client`) as hooks on the
optimizer around the task's loop. :class:`ClientPart` runs the same part around the user's
own loop, so ``with job.client_part(model, optimizer): ...train...`` trains exactly what the
engine trains (bit for bit with the same loop). Parts that need the task's own data loader or
a second training pass (Ditto, IFCA, q-FFL, SCAFFOLD option I) cannot be run this way:
:func:`check_supported` refuses them before any training, naming the algorithm, unless the
user says the loop applies the part itself (``manual_client_part=True``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import torch
from torch import nn

from ..algorithms.client import ClientAlgorithm, LocalRun, client_algorithm, federated_parameters
from ..errors import JobError
from ..params import ParamSpec
from ..task import ClientContext, Task

__all__ = ["ClientPart", "check_supported", "proximal_term", "unsupported_reason"]

# client parts that read the task (its loader, its loss) or retrain: not an optimizer hook
NEEDS_THE_TASK = {
    "ditto": "it trains a personal model with a second pass of the task's training loop",
    "ifca": "it scores every cluster model with the task's loss over the client's data",
    "qffl": "it needs the global model's loss over the client's data before training",
    "dpsgd": "it accounts each step with the task's per-client sample count",
}


def algorithm_name(algorithm: Mapping[str, Any] | None) -> str:
    """``"fedprox(mu=0.01)"``: the part and its hyper-parameters, for messages."""
    if not algorithm:
        return "none"
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(algorithm.items()) if k != "name")
    return f"{algorithm.get('name')}({args})"


def unsupported_reason(algorithm: Mapping[str, Any] | None) -> str | None:
    """Why :class:`ClientPart` cannot run ``algorithm`` in an own loop, or None if it can."""
    if not algorithm:
        return None
    name = str(algorithm.get("name"))
    if name == "scaffold" and algorithm.get("option") == "I":
        return "SCAFFOLD option I takes a full-gradient pass of the task's loader over the data"
    return NEEDS_THE_TASK.get(name)


def check_supported(algorithm: Mapping[str, Any] | None, client_id: int, manual: bool) -> None:
    """Raise :class:`JobError` (before the user trains) if the round's client part cannot be
    applied by :class:`ClientPart` and the user did not say the loop applies it itself."""
    reason = unsupported_reason(algorithm)
    if reason and not manual:
        raise JobError(
            f"client {client_id}: the strategy's client part {algorithm_name(algorithm)} cannot "
            f"run in an own loop ({reason}); train with the built-in engine (fedloom client, a "
            f"Task), or implement it in your loop from job.algorithm and job.tensors and pass "
            f"manual_client_part=True"
        )


def proximal_term(
    model: nn.Module, spec: ParamSpec, global_flat: torch.Tensor, mu: float
) -> torch.Tensor:
    """FedProx's ``mu/2 * ||w - w_global||^2`` over the trainable federated parameters, a
    differentiable scalar to add to the loss (its gradient is the engine's hook,
    ``mu * (w - w_global)``, up to rounding)."""
    params, anchors = federated_parameters(model, spec, global_flat)
    if not params:
        return torch.zeros(())
    total = torch.stack([((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors)]).sum()
    return total * (0.5 * mu)


class _NoTask(Task):
    """What a client part sees as its task in an own loop: there is none; asking is an error
    naming the part (a part not in :data:`NEEDS_THE_TASK` that reads the task lands here)."""

    def __init__(self, part: str):
        self._part = part

    def _refuse(self, what: str) -> NoReturn:
        raise JobError(
            f"the strategy's client part {self._part} asked for the task's {what}; an own loop "
            f"has no Task (pass manual_client_part=True and apply the part in your loop)"
        )

    def build_model(self) -> nn.Module:
        self._refuse("model")

    @property
    def num_clients(self) -> int:
        self._refuse("client count")

    def num_samples(self, client_id: int) -> int:
        self._refuse("sample count")

    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterable[Any]:
        self._refuse("train_loader")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self._refuse("evaluate")


class ClientPart:
    """The round's client part around the user's training (a context manager).

    Entering builds the part's view of the run (the model's trainable federated parameters,
    the global model, the strategy's tensors, this client's persistent ``state``), counts the
    optimizer's steps and runs the part's ``begin`` (which may add gradient corrections as
    optimizer step pre-hooks, or start the model from a cluster model); leaving without an
    exception removes the hooks and runs ``end`` (SCAFFOLD refreshes ``c_i`` and returns
    ``delta_c``, FedNova reports its step norm). ``metrics`` and ``tensors`` then hold what
    the part adds to the upload; :meth:`Job.upload` sends them. With no part this is a no-op.
    """

    def __init__(
        self,
        algorithm: Mapping[str, Any] | None,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: ClientContext,
        spec: ParamSpec,
        global_flat: torch.Tensor,
        tensors: dict[str, torch.Tensor],
    ):
        self.algorithm = dict(algorithm) if algorithm else None
        self.model, self.optimizer, self.ctx = model, optimizer, ctx
        self.spec, self.global_flat, self.tensors = spec, global_flat, tensors
        self.metrics: dict[str, float] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.done = False
        self._part: ClientAlgorithm | None = None
        self._run: LocalRun | None = None
        if self.algorithm:
            reason = unsupported_reason(self.algorithm)
            if reason:
                raise JobError(
                    f"client part {algorithm_name(self.algorithm)} cannot run in an own loop: "
                    f"{reason}"
                )
            self._part = client_algorithm({"algorithm": self.algorithm})

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.spec.unflatten(flat)

    def _model_tensors(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict(keep_vars=True)
        return {name: state[name] for name in self.spec.names}

    @torch.no_grad()
    def _model_to_flat(self, flat: torch.Tensor) -> None:
        tensors = self._model_tensors()
        for name, view in self._views(flat).items():
            view.copy_(tensors[name])

    @torch.no_grad()
    def _flat_to_model(self, flat: torch.Tensor) -> None:
        tensors = self._model_tensors()
        for name, view in self._views(flat).items():
            tensors[name].copy_(view)

    def __enter__(self) -> ClientPart:
        if self._part is None:
            return self
        params, anchors = federated_parameters(self.model, self.spec, self.global_flat)
        flat = torch.empty_like(self.global_flat)
        self._model_to_flat(flat)  # the engine's model is views of flat; here flat mirrors it
        run = LocalRun(
            _NoTask(algorithm_name(self.algorithm)),
            self.model,
            self.optimizer,
            self.ctx,
            self.spec,
            flat,
            self.global_flat,
            params,
            anchors,
            self.tensors,
        )
        run._count_steps()
        self._run = run
        try:
            self._part.begin(run)
        except BaseException:
            run.close()
            raise
        self._flat_to_model(flat)  # a part may start the model elsewhere (a cluster's model)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        run, part = self._run, self._part
        if run is None or part is None:
            self.done = kind is None
            return
        run.close()
        if kind is not None:
            return
        self._model_to_flat(run.flat)
        part.end(run)
        self._flat_to_model(run.flat)
        self.metrics, self.out = dict(run.metrics), dict(run.out)
        self.done = True

    @property
    def steps(self) -> int:
        """Optimizer steps taken inside the block (0 without a client part)."""
        return 0 if self._run is None else self._run.steps
