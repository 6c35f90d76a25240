"""AlphaMed (alphafed) task code, run unchanged by fedloom's engines through a thin adapter.

An AlphaMed FedAvg task is one object per node with hooks that take only ``self``:
``build_model()``, ``build_optimizer(model)``, ``build_train_dataloader()``,
``build_test_dataloader()``, ``train_an_epoch()``, ``test()``, reading ``self.model``,
``self.optimizer``, ``self.train_loader`` and ``self.test_loader``. Subclass
:class:`AlphaMedScheduler` and write those hooks as the AlphaMed tutorial does; wrap it with
:class:`AlphaMedTask` (a :class:`fedloom.Task`) and every fedloom engine runs it.

fedloom trains many clients with one object, so before each hook the adapter sets the node's
view: ``self.client_id`` (read it in ``build_train_dataloader`` to load that client's data),
``self.round``, and the model and optimizer fedloom is training. Each client's train loader is
built once and kept. ``test()`` reports metrics either by returning a dict or, as AlphaMed's
does, through ``self.tb_writer.add_scalar(tag, value, step)`` (the last part of the tag,
``test_results/accuracy`` -> ``accuracy``, is the metric's name). ``train_an_epoch`` may
return the epoch's mean loss (a float, or a dict with ``loss``) to have it recorded.
The whole model's floating-point state is federated, as AlphaMed's default ``state_dict`` is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn

from ..task import ClientContext, Task


class ScalarLog:
    """What ``self.tb_writer`` is during ``test()``: it keeps the scalars as metrics."""

    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, value: Any, step: Any = None, *args: Any, **kw: Any) -> None:
        self.scalars[tag.rsplit("/", 1)[-1]] = float(value)


class AlphaMedScheduler(ABC):
    """AlphaMed's task hooks (``SimpleFedAvgScheduler``'s interface) with their lazy properties.

    Args:
        clients: the number of data holders.
        rounds: the number of rounds (informational: the run's ``rounds`` decides).
    """

    def __init__(self, clients: int, rounds: int | None = None) -> None:
        if clients < 1:
            raise ValueError(f"clients must be >= 1, got {clients}")
        self.clients, self.rounds = clients, rounds
        self.client_id: int | None = None  # the data holder a hook runs for; None: aggregator
        self.round = 0
        self.tb_writer = ScalarLog()

    @abstractmethod
    def build_model(self) -> nn.Module:
        """Return a model object which will be used for training."""

    @abstractmethod
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Return an optimizer for ``model`` (``self.model`` is ``model`` when called)."""

    @abstractmethod
    def build_train_dataloader(self) -> Iterable[Any]:
        """The training data of data holder ``self.client_id`` (a ``DataLoader`` or any
        iterable with a ``dataset`` of known length)."""

    @abstractmethod
    def build_test_dataloader(self) -> Iterable[Any]:
        """The aggregator's test data."""

    @abstractmethod
    def train_an_epoch(self) -> Any:
        """One local epoch over ``self.train_loader`` with ``self.model``/``self.optimizer``."""

    @abstractmethod
    def test(self) -> Any:
        """Test ``self.model`` on ``self.test_loader``; report via a dict or ``tb_writer``."""

    @property
    def model(self) -> nn.Module:
        if not hasattr(self, "_model"):
            self._model = self.build_model()
        return self._model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if not hasattr(self, "_optimizer"):
            self._optimizer = self.build_optimizer(model=self.model)
        return self._optimizer

    @property
    def train_loader(self) -> Iterable[Any]:
        if not hasattr(self, "_train_loader"):
            self._train_loader = self.build_train_dataloader()
        return self._train_loader

    @property
    def test_loader(self) -> Iterable[Any]:
        if not hasattr(self, "_test_loader"):
            self._test_loader = self.build_test_dataloader()
        return self._test_loader

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)


class AlphaMedTask(Task):
    """A :class:`fedloom.Task` running an :class:`AlphaMedScheduler`'s hooks.

    Args:
        scheduler: the AlphaMed-style task object.
        local_epochs: calls of ``train_an_epoch`` per client per round.
    """

    def __init__(self, scheduler: AlphaMedScheduler, local_epochs: int = 1) -> None:
        if local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
        self.scheduler, self.local_epochs = scheduler, local_epochs
        self._loaders: dict[int, Iterable[Any]] = {}

    def build_model(self) -> nn.Module:
        """A fresh model each call, as fedloom needs: the loop and each engine hold their own
        (``self.model`` is set to the one a hook works on before the hook runs)."""
        return self.scheduler.build_model()

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        s = self.scheduler
        s._model = model
        s._optimizer = s.build_optimizer(model=model)
        return s._optimizer

    @property
    def num_clients(self) -> int:
        return self.scheduler.clients

    def _loader(self, client_id: int) -> Iterable[Any]:
        if client_id not in self._loaders:
            s = self.scheduler
            s.client_id = client_id
            self._loaders[client_id] = s.build_train_dataloader()
        return self._loaders[client_id]

    def num_samples(self, client_id: int) -> int:
        loader = self._loader(client_id)
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"client {client_id}: build_train_dataloader() must return a loader with a "
                "sized .dataset (its length weighs the client's update)"
            )
        return len(dataset)

    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterable[Any]:
        return self._loader(client_id)

    def train_an_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: ClientContext
    ) -> dict[str, float]:
        s = self.scheduler
        loader = self._loader(ctx.client_id)
        s.client_id, s.round = ctx.client_id, ctx.round
        s._model, s._optimizer, s._train_loader = model, optimizer, loader
        out = s.train_an_epoch()
        if isinstance(out, dict):
            return {k: float(v) for k, v in out.items()}
        steps = len(loader) if isinstance(loader, Sized) else 1
        return {"steps": steps} if out is None else {"loss": float(out), "steps": steps}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        s = self.scheduler
        s.client_id, s._model, s.tb_writer = None, model, ScalarLog()
        was_training = model.training
        out = s.test()
        model.train(was_training)
        metrics = dict(s.tb_writer.scalars)
        if isinstance(out, dict):
            metrics.update({k: float(v) for k, v in out.items()})
        return metrics

    def describe(self) -> dict[str, Any]:
        return {"task": type(self.scheduler).__name__, "num_clients": self.num_clients}
