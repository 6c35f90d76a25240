"""Process-pool simulation: the clients of a round trained in parallel by forked workers.

Each worker holds its own :class:`InProcessClients` (one reused model per worker) and trains
the clients assigned to it one by one. Parameters never travel by pickling: the global model
sits in one shared-memory tensor (made before forking) and every client of the round writes
its update into its own shared output slot; only ints, the round's JSON-able config and small
metric dicts travel through the queues. ``collect`` yields the updates in plan order (sorted
ids), so aggregation - and hence the final parameters - is bit-identical to
:class:`InProcessClients` with the same seed and the same number of torch threads.

A client is always trained by worker ``cid % workers``, so its per-client state (``ctx.state``,
personal layers, optimizer state) stays in that worker; ``state_dict`` gathers it from the
workers and ``load_state_dict`` sends it back.

On a CPU workers are forked (the task and its tensors are inherited, not pickled). CUDA does
not survive a fork, so a task on a GPU starts its workers with ``spawn``: the task is pickled
to them (CPU tensors through shared memory, CUDA ones as CUDA IPC handles; its ``model_fn``
must be picklable, e.g. a module-level function). A :class:`ClassificationTask` on an
unnumbered ``cuda`` device (``train.device = "cuda"`` or ``"auto"``) puts each worker on its
own GPU, round robin; ``cuda:N`` keeps every worker on GPU N. Workers take the parent's
deterministic-algorithms setting with them.
"""

from __future__ import annotations

import contextlib
import queue
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.multiprocessing as tmp

from ..accel.device import cuda_count, worker_device
from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..classification import ClassificationTask
from ..errors import ClientError, FedloomError
from ..params import flatten_module
from ..task import Task
from ..update import ClientUpdate
from .engine import InProcessClients

_POLL_S = 1.0  # how often a waiting parent checks that its workers are still alive


def _worker_main(
    wid: int,
    task: Task,
    seed: int,
    threads: int,
    global_buf: torch.Tensor,
    inbox: Any,
    outbox: Any,
    device: torch.device | None = None,
    deterministic: bool = False,
) -> None:
    """A worker's loop: train assigned clients into shared slots, answer state requests."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
        if device is not None and isinstance(task, ClassificationTask):
            task = task.to(device)
        engine = InProcessClients(task, seed)
    except BaseException:  # noqa: BLE001 - the parent reports it and stops the run
        outbox.put(("fatal", wid, traceback.format_exc()))
        return
    slots: torch.Tensor | None = None
    while True:
        msg = inbox.get()
        if msg is None:
            break
        kind = msg[0]
        if kind == "train":
            _, gen, rnd, config, jobs, new_slots = msg
            if new_slots is not None:
                slots = new_slots
            assert slots is not None
            plan = RoundPlan.from_wire(config, [cid for _, cid in jobs])
            engine.distribute(rnd, plan, global_buf)
            for pos, cid in jobs:
                try:
                    u = engine.train_client(rnd, cid, plan)
                    if u.extras.get("tensors"):
                        raise RuntimeError(
                            "the client part returns tensors, which ProcessPoolClients does "
                            "not carry; use InProcessClients for this strategy"
                        )
                    slots[pos].copy_(u.params)
                    outbox.put(("ok", gen, pos, cid, int(u.num_samples), dict(u.metrics)))
                except BaseException:  # noqa: BLE001 - the parent reports it and stops the run
                    outbox.put(("error", gen, pos, cid, traceback.format_exc()))
        elif kind == "get_state":
            outbox.put(("state", msg[1], wid, engine.state_dict()))
        elif kind == "set_state":
            engine.load_state_dict(msg[1])


class ProcessPoolClients(BackendBase):
    """The simulation backend that trains a round's clients in ``workers`` processes.

    Args:
        task: the user's task; inherited by the workers through ``fork`` (pickled under
            ``spawn``).
        seed: the run seed (the same as the Federation's, as for :class:`InProcessClients`).
        workers: number of worker processes.
        threads: torch intra-op threads per worker; by default this process's count when
            the pool is made, so the pool is bit-identical to :class:`InProcessClients` here
            (the thread count groups float sums). A config run passes ``simulation.threads``,
            which it also applies to this process.
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; by default ``spawn`` when
            the task's model is on a GPU, else ``fork``.

    Use as a context manager, or call :meth:`close`, to stop the workers.
    """

    def __init__(
        self,
        task: Task,
        seed: int = 0,
        workers: int = 2,
        threads: int | None = None,
        start_method: str | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        threads = torch.get_num_threads() if threads is None else threads
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.task, self.seed, self.workers, self.threads = task, seed, workers, threads
        with torch.random.fork_rng(devices=[]):
            self.spec, flat = flatten_module(task.build_model(), task.personal_layers)
        if start_method is None:
            start_method = "spawn" if flat.device.type == "cuda" else "fork"
        if start_method not in ("fork", "spawn", "forkserver"):
            raise ValueError(f"start_method must be fork, spawn or forkserver: {start_method!r}")
        if start_method == "fork" and flat.device.type == "cuda":
            raise ValueError("a task on CUDA cannot be forked: use start_method='spawn'")
        self.start_method = start_method
        self._global = _shared(torch.zeros(flat.shape, dtype=flat.dtype))
        self._slots = torch.empty(0, self.spec.numel, dtype=flat.dtype)
        self._slots_sent = [False] * workers
        self._ctx: Any = tmp.get_context(start_method)
        self._procs: list[Any] = []
        self._inboxes: list[Any] = []
        self._outbox: Any = None
        self._pending_state: dict[int, dict[str, Any]] = {}
        self._gen = 0
        self._waiting: set[int] = set()  # plan positions of the current round not yet reported
        self._results: dict[int, tuple[Any, ...]] = {}
        self._plan = RoundPlan([])
        self._round = 0
        self._closed = False

    # -- workers -------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._procs:
            return
        if self._closed:
            raise RuntimeError("ProcessPoolClients is closed")
        self._outbox = self._ctx.Queue()
        det = torch.are_deterministic_algorithms_enabled()
        for wid in range(self.workers):
            inbox = self._ctx.Queue()
            p = self._ctx.Process(
                target=_worker_main,
                args=(
                    wid,
                    self.task,
                    self.seed,
                    self.threads,
                    self._global,
                    inbox,
                    self._outbox,
                    self.worker_device(wid),
                    det,
                ),
                name=f"fedloom-pool-{wid}",
                daemon=True,
            )
            p.start()
            self._procs.append(p)
            self._inboxes.append(inbox)
        if self._pending_state:
            self._send_state(self._pending_state)
            self._pending_state = {}

    def _get(self) -> tuple[Any, ...]:
        """The next message from any worker; raises if a worker died."""
        while True:
            try:
                msg = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self._procs if not p.is_alive()]
                if dead:
                    codes = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in dead)
                    raise RuntimeError(f"process-pool worker died: {codes}") from None
                continue
            if msg[0] == "fatal":
                raise RuntimeError(f"process-pool worker {msg[1]} failed to start:\n{msg[2]}")
            return tuple(msg)

    def _drain(self) -> None:
        """Wait for the results of an unfinished round, so no worker still uses old buffers."""
        while self._waiting:
            msg = self._get()
            if msg[0] in ("ok", "error") and msg[1] == self._gen:
                self._waiting.discard(msg[2])
        self._results = {}

    def close(self) -> None:
        """Stop the workers (sentinel, join with a timeout, then terminate)."""
        self._closed = True
        procs, self._procs = self._procs, []
        for inbox in self._inboxes:
            with contextlib.suppress(OSError, ValueError):
                inbox.put(None)
        for p in procs:
            p.join(timeout=5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in [*self._inboxes, self._outbox]:
            if q is not None:
                q.close()
                q.join_thread()
        self._inboxes, self._outbox = [], None
        self._waiting.clear()

    def __enter__(self) -> ProcessPoolClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def worker_device(self, wid: int) -> torch.device | None:
        """Where worker ``wid`` trains: its own GPU for a ClassificationTask on an unnumbered
        CUDA device, else None (wherever the task puts it)."""
        task = self.task
        if isinstance(task, ClassificationTask) and task.device.type == "cuda":
            return worker_device(task.device, wid, cuda_count())
        return None

    @property
    def processes(self) -> list[Any]:
        """The live worker processes (empty before the first round and after close)."""
        return list(self._procs)

    # -- the Backend protocol ------------------------------------------------------------------
    def available_clients(self, round: int) -> list[int]:
        return list(range(self.task.num_clients))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        """Copy the global model into shared memory once and hand each worker its clients."""
        self._start()
        self._drain()
        self._gen += 1
        if plan.tensors:
            raise FedloomError(
                f"the strategy sends tensors ({', '.join(plan.tensors)}) with the model, which "
                "ProcessPoolClients does not carry; use InProcessClients for this strategy"
            )
        self._plan, self._round = plan, round
        clients = list(plan.clients)
        if len(clients) > self._slots.shape[0]:  # grow the output slots for a bigger cohort
            rows = torch.empty(len(clients), self.spec.numel, dtype=self._slots.dtype)
            self._slots = _shared(rows)
            self._slots_sent = [False] * self.workers
        self._global.copy_(global_params)
        jobs: list[list[tuple[int, int]]] = [[] for _ in range(self.workers)]
        for pos, cid in enumerate(clients):
            jobs[int(cid) % self.workers].append((pos, int(cid)))
        config = plan.to_wire()
        for wid, mine in enumerate(jobs):
            if not mine:
                continue
            slots = None if self._slots_sent[wid] else self._slots
            self._inboxes[wid].put(("train", self._gen, round, config, mine, slots))
            self._slots_sent[wid] = True
        self._waiting = set(range(len(clients)))
        self._results = {}

    def collect(self) -> Iterator[ClientUpdate]:
        """Yield the round's updates in plan order; each buffer is a view of its shared slot."""
        gen, rnd = self._gen, self._round
        for pos, cid in enumerate(self._plan.clients):
            while pos not in self._results:
                msg = self._get()
                if msg[0] in ("ok", "error") and msg[1] == gen:
                    self._results[msg[2]] = msg
            msg = self._results.pop(pos)
            self._waiting.discard(pos)
            if msg[0] == "error":
                raise ClientError(int(cid), rnd, "local training", RuntimeError(msg[4]))
            _, _, _, mcid, num_samples, metrics = msg
            yield ClientUpdate(mcid, self._slots[pos], num_samples, metrics, rnd)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Per-client state gathered from the workers that keep it."""
        if not self._procs:
            return {"clients": {str(k): v for k, v in self._pending_state.items()}}
        self._drain()
        for inbox in self._inboxes:
            inbox.put(("get_state", self._gen))
        merged: dict[str, Any] = {}
        got: set[int] = set()
        while len(got) < self.workers:
            msg = self._get()
            if msg[0] == "state" and msg[1] == self._gen:
                got.add(msg[2])
                merged.update(msg[3].get("clients", {}))
        return {"clients": dict(sorted(merged.items(), key=lambda kv: int(kv[0])))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = {int(k): v for k, v in state.get("clients", {}).items()}
        if not self._procs:
            self._pending_state = states
            return
        self._drain()
        self._send_state(states)

    def _send_state(self, states: dict[int, dict[str, Any]]) -> None:
        for wid, inbox in enumerate(self._inboxes):
            mine = {str(c): s for c, s in states.items() if c % self.workers == wid}
            inbox.put(("set_state", {"clients": mine}))


def _shared(t: torch.Tensor) -> torch.Tensor:
    """``t`` moved to shared memory, so forked workers read and write the same buffer."""
    t.share_memory_()
    return t
