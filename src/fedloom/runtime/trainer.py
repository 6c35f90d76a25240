"""A FedLab-style client trainer: the own-loop Job API as a class to subclass.

FedLab users write a ``ClientTrainer`` whose ``local_process`` trains on the server's payload
and whose ``uplink_package`` is sent back. :class:`ClientTrainer` is that shape over
:func:`~fedloom.runtime.ownloop.connect`: subclass it, build the model and say how many
samples a client holds, and write :meth:`ClientTrainer.train`, the local training of one job
(the model already holds the global model). :meth:`~ClientTrainer.local_process` loads the
job, trains and uploads; :meth:`~ClientTrainer.run` connects to an aggregator and serves its
jobs, :meth:`~ClientTrainer.run_local` serves a :class:`~fedloom.LocalFederation` (every
client in this process), so the same class gives the same numbers in both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from torch import nn

from .ownloop import Connection, Job, connect
from .security import TLSConfig

__all__ = ["ClientTrainer", "JobSource"]


class JobSource(Protocol):
    """What hands out jobs: a :class:`~fedloom.runtime.Connection` or a LocalFederation."""

    def jobs(self) -> Iterator[Job]: ...


class ClientTrainer(ABC):
    """Subclass and write :meth:`build_model`, :meth:`num_samples` and :meth:`train`.

    One model is built lazily and reused for every job, as the built-in engine does. Inside
    :meth:`train`, build the optimizer and train within ``with job.client_part(model,
    optimizer):`` so a strategy's client part (FedProx, SCAFFOLD, ...) is applied; the seeds the
    engine uses are ``job.seed`` and ``job.generator``. ``personal_layers`` are kept on the
    client; ``manual_client_part = True`` says :meth:`train` applies the part itself.
    """

    personal_layers: tuple[str, ...] = ()
    manual_client_part: bool = False

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self.jobs_done = 0

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model of the aggregator's architecture."""

    @abstractmethod
    def num_samples(self, client_id: int) -> int:
        """Training samples of ``client_id`` (announced at check-in; the weight's bound)."""

    @abstractmethod
    def train(self, model: nn.Module, job: Job) -> tuple[int, Mapping[str, float]]:
        """Train ``model`` (it holds the job's global model) for ``job`` in place; return
        ``(num_samples, metrics)`` of this update (metrics: at most 64 finite numbers)."""

    @property
    def model(self) -> nn.Module:
        """The trainer's model (built on first use)."""
        if self._model is None:
            self._model = self.build_model()
        return self._model

    def local_process(self, job: Job) -> bool:
        """One job: load the global model, :meth:`train`, upload. True if it was accepted."""
        model = job.load_into(self.model)
        num_samples, metrics = self.train(model, job)
        accepted = job.upload(model, num_samples=num_samples, metrics=metrics)
        self.jobs_done += 1
        return accepted

    def connected(self, connection: Connection) -> None:
        """Called by :meth:`run` once checked in (``connection.seed`` is the run seed, e.g. to
        check a data split against); nothing by default."""
        del connection

    def serve(self, source: JobSource) -> int:
        """Every job ``source`` hands out, until it stops; the number of jobs trained."""
        done = 0
        for job in source.jobs():
            self.local_process(job)
            done += 1
        return done

    def run(
        self,
        address: str,
        *,
        client_id: int,
        token: str = "",
        task_id: str = "fedloom",
        tls: TLSConfig | None = None,
        **options: Any,
    ) -> int:
        """Be data holder ``client_id`` of the aggregator at ``address`` until the run ends
        (check-in, heartbeats, retries, TLS and tokens as :func:`~fedloom.connect`, whose
        other keywords ``options`` takes); the number of jobs trained."""
        with connect(
            address,
            client_id=client_id,
            num_samples=self.num_samples(client_id),
            token=token,
            task_id=task_id,
            tls=tls,
            personal_layers=self.personal_layers,
            manual_client_part=self.manual_client_part,
            model=self.model,
            **options,
        ) as conn:
            self.connected(conn)
            return self.serve(conn)

    def run_local(self, federation: Any) -> Any:
        """Serve a :class:`~fedloom.LocalFederation` (every client's jobs, in this process)
        and return its :class:`~fedloom.RunResult`. Its ``manual_client_part`` is its own
        constructor's argument. One model serves every client here: layers kept per client
        (``personal_layers``) are the trainer's to keep by ``job.client_id``."""
        self.serve(federation)
        return federation.result
