"""The backends of :class:`~fedloom.deploy.local.LocalFederation`: the round loop's client work
handed to the user's own loop, one job at a time, and each upload handed back.

:class:`Handoff` serves the synchronous loop (a round's sampled clients in plan order);
:class:`AsyncHandoff` the asynchronous one with the network runtime's semantics: every client
trains all the time, each on the newest version when it asked for work, so an update arrives
some versions late (its staleness) and is weighed against the version it started from. The
user's loop runs one job at a time, so "all the time" is emulated in a fixed order: every
client holds a job from the start, the oldest job is the next one trained, and a client whose
update came back asks for work again after the loop has taken that update in (on the newest
version). Same seed, same jobs, same model.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..errors import FedloomError
from ..params import ParamSpec
from ..runtime.ownloop import Job
from ..seeding import derive_seed
from ..task import Task
from ..update import ClientUpdate

__all__ = ["AsyncHandoff", "Handoff", "Stopped"]


class Stopped(FedloomError):
    """The user's loop stopped iterating before the run finished."""


class Handoff(BackendBase):
    """The synchronous backend: each planned client's job goes to the user's loop (``jobs``),
    its upload comes back (``uploads``: a :class:`ClientUpdate`, None for no upload, or
    :class:`Stopped`). Client state (a strategy's client part's) is kept per client and
    checkpointed with the run."""

    def __init__(self, task: Task, seed: int, manual_client_part: bool = False):
        self.task, self.seed, self.manual_client_part = task, seed, manual_client_part
        self.spec: ParamSpec | None = None  # set once the loop knows the model
        self.personal = tuple(task.personal_layers)
        self.states: dict[int, dict[str, Any]] = {}
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.uploads: queue.Queue[Any] = queue.Queue()
        self._plan, self._round, self._global = RoundPlan([]), 0, torch.empty(0)

    def available_clients(self, round: int) -> list[int]:
        return list(range(self.task.num_clients))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self._plan, self._round, self._global = plan, round, global_params.detach().clone()

    def collect(self) -> Iterator[ClientUpdate]:
        tensors = {k: v.detach().clone() for k, v in self._plan.tensors.items()}
        for cid in self._plan.clients:
            update = self.handle(
                cid, self._round, self._round - 1, self._plan.to_wire(), self._global, tensors
            )
            if update is not None:
                yield update

    def handle(
        self,
        cid: int,
        round: int,
        version: int,
        config: dict[str, Any],
        params: torch.Tensor,
        tensors: dict[str, torch.Tensor],
    ) -> ClientUpdate | None:
        """Hand ``cid``'s job to the user's loop and wait for its upload (None: none)."""
        assert self.spec is not None
        job = Job(
            cid,
            round,
            version,
            config,
            self.spec,
            params,
            tensors,
            derive_seed(self.seed, "client", round, cid),
            self._upload,
            self.personal,
            self.task.num_samples(cid),
            state=self.states.setdefault(cid, {}),
            manual_client_part=self.manual_client_part,
        )
        self.jobs.put(job)
        update = self.uploads.get()
        if update is Stopped:
            raise Stopped("the loop over jobs() stopped before the run finished")
        return update  # type: ignore[no-any-return]

    def _upload(
        self,
        job: Job,
        flat: torch.Tensor,
        num_samples: int,
        metrics: dict[str, float],
        extras: dict[str, torch.Tensor],
    ) -> bool:
        update = ClientUpdate(job.client_id, flat, num_samples, metrics, job.round, job.version)
        if extras:
            update.extras["tensors"] = extras
        self.uploads.put(update)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"clients": {str(c): s for c, s in self.states.items() if s}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states = {int(c): s for c, s in state.get("clients", {}).items()}


class AsyncHandoff(Handoff):
    """The asynchronous backend (FedAsync, FedBuff): every client always holds a job; the
    oldest is handed to the user's loop next (see the module's docstring). ``keep`` versions
    are kept as bases for stale updates (the strategy's ``max_staleness + 1``)."""

    def __init__(self, task: Task, seed: int, manual_client_part: bool = False, keep: int = 21):
        super().__init__(task, seed, manual_client_part)
        self.keep = keep
        self._versions: dict[int, torch.Tensor] = {}
        self._current = -1
        self._in_flight: deque[tuple[int, int]] = deque()  # (client, version), oldest first
        self._idle: list[int] | None = None  # asking for work at the next pull; None: all

    def publish(self, params: torch.Tensor, version: int) -> None:
        self._versions[version] = params.detach().clone()
        self._current = version
        held = {v for _, v in self._in_flight}
        for old in [v for v in self._versions if v <= version - self.keep and v not in held]:
            del self._versions[old]

    def base(self, version: int) -> torch.Tensor | None:
        if version <= self._current - self.keep:
            return None  # too old, as the network aggregator's kept versions
        return self._versions.get(version)

    def next_update(self, timeout: float) -> ClientUpdate | None:
        del timeout  # the user's loop is the only client: wait for its upload
        idle = list(range(self.task.num_clients)) if self._idle is None else self._idle
        self._in_flight.extend((cid, self._current) for cid in idle)
        self._idle = []
        cid, version = self._in_flight.popleft()
        update = self.handle(cid, version + 1, version, {}, self._versions[version], {})
        self._idle.append(cid)
        return update
