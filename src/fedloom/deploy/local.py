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
what the built-in engine does gives the simulation's model bit for bit. Asynchronous
strategies (``fedasync``, ``fedbuff``) run with the network runtime's semantics (versions,
staleness), emulated in a fixed order (:mod:`.handoff`). A strategy's client part is applied
with ``job.client_part`` (:mod:`fedloom.runtime.clientpart`) and checked as over the network.

Composition, not runtime: it runs the round loop (:mod:`fedloom.federation`) and builds
from a config through :mod:`fedloom.experiment`; of the runtime it takes only the
:class:`~fedloom.runtime.Job` its loop is handed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torch import nn

from ..algorithms.asynchronous import AsyncStrategy
from ..algorithms.base import Strategy
from ..compose.engines import no_compression
from ..errors import ConfigError, FedloomError
from ..experiment import Experiment
from ..federation import Federation, RunResult
from ..federation.async_loop import AsyncFederation
from ..params import ParamSpec
from ..registry import STRATEGIES
from ..runtime.clientpart import check_supported
from ..runtime.ownloop import Job
from ..task import ClientContext, Task
from .handoff import AsyncHandoff, Handoff, Stopped

log = logging.getLogger("fedloom.client")

__all__ = ["LocalFederation"]


class _LoopTask(Task):
    """A Task for a model and sample counts only: the user's loop does the training."""

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        num_samples: Sequence[int],
        evaluate: Callable[[nn.Module], dict[str, float]] | None,
    ):
        self._model_fn, self._samples, self._evaluate = model_fn, list(num_samples), evaluate

    def build_model(self) -> nn.Module:
        return self._model_fn()

    @property
    def num_clients(self) -> int:
        return len(self._samples)

    def num_samples(self, client_id: int) -> int:
        return int(self._samples[client_id])

    def train_loader(self, client_id: int, ctx: ClientContext) -> Iterable[Any]:
        raise FedloomError("a LocalFederation's clients train in the user's own loop")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return dict(self._evaluate(model)) if self._evaluate else {}


class LocalFederation:
    """The simulation, with the user's own loop as every client.

    Args:
        model: a Task (its ``build_model``, client count, ``num_samples`` as the announced
            bound, ``evaluate`` and ``personal_layers``; its training hooks are not used), or
            a callable building the model (then ``num_samples`` is required).
        strategy: a synchronous strategy (sampling and aggregation), or an asynchronous one
            (``FedAsync``, ``FedBuff``: ``rounds`` is then the number of model versions, and
            every client trains all the time, each on the newest version when it asked).
        num_samples: each client's sample count (client ``i`` is ``num_samples[i]``) when
            ``model`` is a callable; uploads may not weigh more.
        evaluate: ``evaluate(model) -> metrics`` of the global model (with a callable model).
        manual_client_part: the loop applies the strategy's client part itself (see
            :func:`fedloom.connect`).
        rounds, seed, **options: as for :class:`~fedloom.Federation` (``eval_every``,
            ``target``, ``callbacks``, ``max_update_norm``, ...; ``every_seconds`` for an
            asynchronous strategy, which makes the run depend on the clock).

    :meth:`from_config` builds one from a config as ``fedloom run`` would (run directory,
    metrics, checkpoint and report included). After ``jobs()`` is exhausted, ``result`` holds
    the :class:`~fedloom.RunResult`.
    """

    def __init__(
        self,
        model: Task | Callable[[], nn.Module],
        strategy: Strategy | AsyncStrategy,
        *,
        rounds: int,
        seed: int = 0,
        num_samples: Sequence[int] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        manual_client_part: bool = False,
        **options: Any,
    ):
        if isinstance(model, Task):
            task: Task = model
        else:
            if num_samples is None:
                raise ValueError("num_samples (one count per client) is needed with a model")
            task = _LoopTask(model, num_samples, evaluate)
        federation: Federation
        if isinstance(strategy, AsyncStrategy):
            handoff = AsyncHandoff(task, seed, manual_client_part)
            federation = AsyncFederation(
                task, strategy, handoff, rounds=rounds, seed=seed, **options
            )
            backend: Handoff = handoff
        else:
            if "every_seconds" in options:
                raise ValueError("every_seconds applies to an asynchronous strategy only")
            backend = Handoff(task, seed, manual_client_part)
            federation = Federation(task, strategy, backend, rounds=rounds, seed=seed, **options)
        self.experiment: Experiment | None = None
        self._attach(federation, backend)

    @classmethod
    def from_config(
        cls,
        source: Any,
        overrides: Sequence[str] = (),
        *,
        manual_client_part: bool = False,
        **kwargs: Any,
    ) -> LocalFederation:
        """The run a config describes (``fedloom.Experiment.from_config`` with this backend:
        the config's task gives the model, client counts and evaluation; ``kwargs`` such as
        ``overwrite`` and ``resume`` are passed on). Sync and async strategies alike."""
        self = cls.__new__(cls)
        made: list[Handoff] = []

        def backend(cfg: Any, task: Task) -> Callable[[ParamSpec], Handoff]:
            if cfg.topology is not None:
                raise ConfigError("topology: a LocalFederation runs a flat federation")
            no_compression(cfg, "a LocalFederation (it hands its loop plain models)")
            kind, made_by = Handoff, STRATEGIES.get(cfg.strategy.name)
            if isinstance(made_by, type) and issubclass(made_by, AsyncStrategy):
                kind = AsyncHandoff
            made.append(kind(task, cfg.seed, manual_client_part))
            return lambda spec: made[-1]  # the loop hands it the model's spec (_attach keeps it)

        exp = Experiment.from_config(source, list(overrides), backend=backend, **kwargs)
        self.experiment = exp
        self._attach(exp.federation, made[0])
        return self

    def _attach(self, federation: Federation, backend: Handoff) -> None:
        self.federation, self._backend = federation, backend
        strategy = federation.strategy
        if isinstance(backend, AsyncHandoff) and isinstance(strategy, AsyncStrategy):
            backend.keep = strategy.max_staleness + 1  # the bases of every update it may take
        backend.spec = federation.spec
        self.spec, self.seed = federation.spec, federation.seed
        self.result: RunResult | None = None
        self._thread: threading.Thread | None = None

    @property
    def asynchronous(self) -> bool:
        return isinstance(self.federation, AsyncFederation)

    def jobs(self) -> Iterator[Job]:
        """Every client's job in turn until the run ends (sync: the round's sampled clients in
        plan order; async: see :mod:`.handoff`). An error in the round loop is raised here;
        leaving the loop early stops the run."""
        if self._thread is not None:
            raise FedloomError("jobs() of a LocalFederation can be iterated once")
        done = object()
        backend = self._backend

        def run() -> None:
            try:
                runner = self.experiment or self.federation
                self.result = runner.run()
                backend.jobs.put(done)
            except Stopped:
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
                    assert isinstance(item, BaseException)
                    raise item
                check_supported(item.algorithm, item.client_id, backend.manual_client_part)
                yield item
                if not item.uploaded:
                    log.warning("client %d: %r ended without an upload", item.client_id, item)
                    backend.uploads.put(None)
        finally:
            if not finished:  # the user's loop stopped early: the round loop stops too
                backend.uploads.put(Stopped)
            self._thread.join(60)
