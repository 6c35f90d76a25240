"""The own-loop API in simulation: the user's ``for job in fl.jobs()`` loop, no processes.

:class:`LocalFederation` runs the simulation's own round loop (:class:`~fedloom.Federation`:
the strategy's sampling and aggregation, evaluation, stop rules, the run recorder) with a
backend whose clients are the user's loop: ``jobs()`` yields the :class:`~fedloom.runtime.Job`
of every sampled client in turn, round after round, and each upload is handed to the
aggregation as the network aggregator hands it. A loop written against
:func:`fedloom.connect` runs unchanged when it picks its data by ``job.client_id``::

    def train(fl):                      # fl: a Connection, or a LocalFederation
        for job in fl.jobs():
            x, y = my_data(job.client_id)
            ...
            job.upload(model, num_samples=len(y))

    train(fedloom.LocalFederation.from_config("run.toml"))           # in this process
    with fedloom.connect(address, client_id=3, num_samples=n) as fl:  # as data holder 3
        train(fl)

The round loop runs in a background thread that waits while the user's loop trains (one
client at a time), so the same seed gives the same model every time, and a loop that does
what the built-in engine does gives the simulation's model bit for bit. Synchronous
strategies only (``fedasync``/``fedbuff`` run over the network).

Composition, not runtime: it runs the round loop (:mod:`fedloom.federation`) and builds
from a config through :mod:`fedloom.experiment`; of the runtime it takes only the
:class:`~fedloom.runtime.Job` its loop is handed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..algorithms.base import RoundPlan, Strategy
from ..errors import ConfigError, FedloomError
from ..experiment import Experiment
from ..federation import Federation, RunResult
from ..federation.async_loop import AsyncFederation
from ..runtime.ownloop import Job
from ..seeding import derive_seed
from ..task import ClientContext, Task
from ..update import ClientUpdate

log = logging.getLogger("fedloom.client")

__all__ = ["LocalFederation"]


class _Stopped(FedloomError):
    """The user's loop stopped iterating before the run finished."""


class _LoopTask(Task):
    """A Task for a model and sample counts only: the user's loop does the training."""

    def __init__(self, model_fn, num_samples, evaluate):
        self._model_fn, self._samples, self._evaluate = model_fn, list(num_samples), evaluate

    def build_model(self) -> nn.Module:
        return self._model_fn()

    @property
    def num_clients(self) -> int:
        return len(self._samples)

    def num_samples(self, client_id: int) -> int:
        return int(self._samples[client_id])

    def train_loader(self, client_id: int, ctx: ClientContext):
        raise FedloomError("a LocalFederation's clients train in the user's own loop")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return dict(self._evaluate(model)) if self._evaluate else {}


class _Handoff:
    """The backend: each planned client's job goes to the user's loop, its upload comes back."""

    def __init__(self, task: Task, seed: int):
        self.task, self.seed, self.spec = task, seed, None
        self.personal = tuple(task.personal_layers)
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.uploads: queue.Queue[Any] = queue.Queue()
        self._plan, self._round, self._global = RoundPlan([]), 0, torch.empty(0)

    def available_clients(self, round: int) -> list[int]:
        return list(range(self.task.num_clients))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self._plan, self._round, self._global = plan, round, global_params.detach().clone()

    def collect(self) -> Iterator[ClientUpdate]:
        for cid in self._plan.clients:
            job = Job(
                cid,
                self._round,
                self._round - 1,
                self._plan.to_wire(),
                self.spec,
                self._global,
                {k: v.detach().clone() for k, v in self._plan.tensors.items()},
                derive_seed(self.seed, "client", self._round, cid),
                self._upload,
                self.personal,
                self.task.num_samples(cid),
            )
            self.jobs.put(job)
            update = self.uploads.get()
            if update is _Stopped:
                raise _Stopped("the loop over jobs() stopped before the run finished")
            if update is not None:
                yield update

    def _upload(self, job: Job, flat, num_samples: int, metrics: dict, extras: dict) -> bool:
        update = ClientUpdate(job.client_id, flat, num_samples, metrics, job.round, job.version)
        if extras:
            update.extras["tensors"] = extras
        self.uploads.put(update)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class LocalFederation:
    """The simulation, with the user's own loop as every client.

    Args:
        model: a Task (its ``build_model``, client count, ``num_samples`` as the announced
            bound, ``evaluate`` and ``personal_layers``; its training hooks are not used), or
            a callable building the model (then ``num_samples`` is required).
        strategy: a synchronous strategy (sampling and aggregation).
        num_samples: each client's sample count (client ``i`` is ``num_samples[i]``) when
            ``model`` is a callable; uploads may not weigh more.
        evaluate: ``evaluate(model) -> metrics`` of the global model (with a callable model).
        rounds, seed, **options: as for :class:`~fedloom.Federation` (``eval_every``,
            ``target``, ``callbacks``, ``max_update_norm``, ...).

    :meth:`from_config` builds one from a config as ``fedloom run`` would (run directory,
    metrics, checkpoint and report included). After ``jobs()`` is exhausted, ``result`` holds
    the :class:`~fedloom.RunResult`.
    """

    def __init__(
        self,
        model: Task | Callable[[], nn.Module],
        strategy: Strategy,
        *,
        rounds: int,
        seed: int = 0,
        num_samples: Sequence[int] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        **options: Any,
    ):
        if isinstance(model, Task):
            task = model
        else:
            if num_samples is None:
                raise ValueError("num_samples (one count per client) is needed with a model")
            task = _LoopTask(model, num_samples, evaluate)
        self._backend = _Handoff(task, seed)
        self._attach(Federation(task, strategy, self._backend, rounds=rounds, seed=seed, **options))

    @classmethod
    def from_config(cls, source: Any, overrides: Sequence[str] = (), **kwargs: Any):
        """The run a config describes (``fedloom.Experiment.from_config`` with this backend:
        the config's task gives the model, client counts and evaluation; ``kwargs`` such as
        ``overwrite`` and ``resume`` are passed on)."""
        self = cls.__new__(cls)
        made: list[_Handoff] = []

        def backend(cfg, task):
            if cfg.topology is not None:
                raise ConfigError("topology: a LocalFederation runs a flat federation")
            made.append(_Handoff(task, cfg.seed))
            return made[-1]

        exp = Experiment.from_config(source, list(overrides), backend=backend, **kwargs)
        if isinstance(exp.federation, AsyncFederation):
            raise ConfigError(
                f"strategy {exp.config.strategy.name!r} is asynchronous: a LocalFederation runs "
                "synchronous strategies; run it over the network (fedloom server + connect)"
            )
        self.experiment = exp
        self._backend = made[0]
        self._attach(exp.federation)
        return self

    def _attach(self, federation: Federation) -> None:
        self.federation = federation
        self._backend.spec = federation.spec
        self.spec, self.seed = federation.spec, federation.seed
        self.result: RunResult | None = None
        self._thread: threading.Thread | None = None

    def jobs(self) -> Iterator[Job]:
        """Every sampled client's job, round by round, until the run ends. An error in the
        round loop is raised here; leaving the loop early stops the run."""
        if self._thread is not None:
            raise FedloomError("jobs() of a LocalFederation can be iterated once")
        done = object()
        backend = self._backend

        def run() -> None:
            try:
                runner = getattr(self, "experiment", None) or self.federation
                self.result = runner.run()
                backend.jobs.put(done)
            except _Stopped:
                backend.jobs.put(done)
            except BaseException as e:  # noqa: BLE001 - raised in the user's thread
                backend.jobs.put(e)

        self._thread = threading.Thread(target=run, name="fedloom-local-rounds", daemon=True)
        self._thread.start()
        finished = False
        try:
            while True:
                item = backend.jobs.get()
                if item is done or isinstance(item, BaseException):
                    finished = True
                    if item is done:
                        return
                    raise item
                yield item
                if not item.uploaded:
                    log.warning("client %d: %r ended without an upload", item.client_id, item)
                    backend.uploads.put(None)
        finally:
            if not finished:  # the user's loop stopped early: the round loop stops too
                backend.uploads.put(_Stopped)
            self._thread.join(60)
