"""In-process simulation: every client trained in turn on one reused model.

Per client this costs what the plain PyTorch loop costs: one ``copy_`` of the global buffer
into the model, building the optimizer, the user's epochs. The update handed to the strategy
is the model's own flat buffer (no copy); the strategy folds it in before the next client.
Everything stays on the task's device (the model's); the task's ``mixed_precision`` reaches
its loop as ``ctx.amp`` (a fresh fp16 gradient scaler per client).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..accel.precision import MixedPrecision
from ..algorithms.base import RoundPlan
from ..algorithms.client import LocalRun, build_client_algorithm, federated_parameters
from ..backend import BackendBase
from ..compression.link import STATE_KEY, Compression, codec_state
from ..errors import ClientError
from ..params import flatten_module
from ..seeding import derive_seed, seed_torch
from ..task import ClientContext, Task
from ..update import ClientUpdate
from .states import ClientStates

log = logging.getLogger("fedloom")

# torch's global RNG is one per process: seeding it and then building a model or training a
# client must not interleave with another thread doing the same (clients run as threads in
# tests and embedded deployments); uncontended, the lock costs well under a microsecond
MODEL_INIT_LOCK = threading.RLock()


class InProcessClients(BackendBase):
    """The simulation backend: trains the clients of a round in this process.

    Per-client state (``ctx.state``, personal layers, optimizer state when the task keeps it)
    is stored only for clients that have some, in :class:`~fedloom.simulation.states.ClientStates`,
    and is part of ``state_dict`` for checkpoints.

    Args:
        task: the user's task.
        seed: the run seed (the Federation's).
        state_memory_mb: memory budget (MiB of tensors) for per-client state; past it, the least
            recently used clients' states are spilled to a temporary directory and read back
            when those clients train again (results are unchanged). None: all kept in memory.
            A checkpoint (``state_dict``) still holds every state at once: with huge spilled
            state it costs that memory and disk each round; ``output.checkpoint = false``
            avoids it.
        compression: the run's up and down chains (:class:`~fedloom.compression.link.
            Compression`): the global model is decoded from its downlink bytes before the
            clients train, each update from its uplink bytes after; the client's codec state
            (error feedback) is kept with its other state; ``round_stats`` then reports the
            bytes the chains produced.
    """

    def __init__(
        self,
        task: Task,
        seed: int = 0,
        state_memory_mb: float | None = None,
        compression: Compression | None = None,
    ):
        self.task = task
        self.seed = seed
        with MODEL_INIT_LOCK:
            seed_torch(derive_seed(seed, "init"))
            self.model = task.build_model()
        self.spec, self.flat = flatten_module(self.model, task.personal_layers)
        self._global = torch.empty_like(self.flat)
        self._personal = self._personal_tensors()
        self._personal_init = {k: v.detach().clone() for k, v in self._personal.items()}
        self.states = ClientStates(memory_mb=state_memory_mb)
        self._plan = RoundPlan([])
        self._wired: tuple[RoundPlan | None, dict[str, Any]] = (None, {})
        self._round = 0
        self.compression = compression or None
        self._exact = torch.empty_like(self.flat) if self.compression else self._global
        self._amp = MixedPrecision(task.mixed_precision, self.flat.device)
        if self._amp.enabled and type(task).train_an_epoch is not Task.train_an_epoch:
            log.warning(
                "%s overrides train_an_epoch: it trains in %s only where it uses ctx.amp",
                type(task).__name__,
                task.mixed_precision,
            )
        self._bytes: dict[str, int] = {}

    def available_clients(self, round: int) -> list[int]:
        return list(range(self.task.num_clients))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        """Snapshot the global model for this round (once, not per client)."""
        self._global.copy_(global_params)
        self._plan, self._round = plan, round
        c = self.compression
        if c is not None:
            self._exact.copy_(global_params)
            self._bytes = {"bytes_up": 0} if c.up is not None else {}
        if c is not None and c.down is not None:
            # the plan's tensors travel losslessly: decoded, they are the plan's own
            model, _, nbytes = c.download(round, global_params, plan.tensors)
            self._global.copy_(model)
            self._bytes["bytes_down"] = nbytes * len(plan.clients)

    def collect(self) -> Iterator[ClientUpdate]:
        """Train the planned clients one after another, yielding each update as it is ready."""
        for cid in self._plan.clients:
            yield self.train_client(self._round, cid, self._plan)

    def train_client(self, round: int, cid: int, plan: RoundPlan) -> ClientUpdate:
        """Train ``cid`` for ``round`` as ``plan`` says (its tensors: the distributed plan's)."""
        with MODEL_INIT_LOCK:  # seeds torch's global RNG: one client at a time per process
            return self._train_client(round, cid, plan)

    def _train_client(self, round: int, cid: int, plan: RoundPlan) -> ClientUpdate:
        task, model = self.task, self.model
        self.flat.copy_(self._global)
        state = self.states.get(cid, {})
        if self._personal:
            saved = state.get("personal", self._personal_init)
            with torch.no_grad():
                for name, t in self._personal.items():
                    t.copy_(saved[name])
        seed = derive_seed(self.seed, "client", round, cid)
        seed_torch(seed)
        ctx = ClientContext(
            cid,
            round,
            torch.Generator().manual_seed(seed),
            state,
            self._wire(plan),
            self._global,
            self._plan.tensors,
            amp=self._amp.fresh(),
        )
        epochs = plan.epochs_for(cid, task.local_epochs)
        model.train()
        t0 = time.perf_counter()
        loss_sum, steps = 0.0, 0
        algo, run = build_client_algorithm(plan.client_algorithm, plan.client_options), None
        try:
            optimizer = task.build_optimizer(model)
            if task.keep_optimizer_state and "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
            if algo is not None:
                run = self._local_run(optimizer, ctx)
                algo.begin(run)
            for _ in range(epochs):
                m = task.train_an_epoch(model, optimizer, ctx)
                loss_sum += float(m.get("loss", 0.0)) * int(m.get("steps", 1))
                steps += int(m.get("steps", 1))
            if algo is not None and run is not None:
                run.close()
                algo.end(run)
        except Exception as e:
            raise ClientError(cid, round, "local training", e) from e
        finally:
            if run is not None:
                run.close()
        if self.compression is not None and self.compression.up is not None:
            self._upload(round, cid, state, run)
        if task.keep_optimizer_state:
            state["optimizer"] = optimizer.state_dict()
        if self._personal:
            state["personal"] = {k: v.detach().clone() for k, v in self._personal.items()}
        if state:
            self.states[cid] = state
        metrics = {
            "loss": loss_sum / max(steps, 1),
            "steps": steps,
            "epochs": epochs,
            "seconds": time.perf_counter() - t0,
        }
        extras: dict[str, Any] = {}
        if run is not None:
            metrics.update(run.metrics)
            if run.out:
                extras["tensors"] = run.out
        return ClientUpdate(cid, self.flat, task.num_samples(cid), metrics, round, extras=extras)

    def _upload(self, round: int, cid: int, state: dict[str, Any], run: LocalRun | None) -> None:
        """Send the trained model through the up chain: ``self.flat`` becomes what the
        server decodes, ``run.out`` the extras it decodes; the bytes are counted."""
        assert self.compression is not None
        if not bool(torch.isfinite(self.flat).all()):
            return  # nothing to encode: the loop rejects the update as it is
        codec = codec_state(state.get(STATE_KEY))
        out = run.out if run is not None else {}
        model, extras, nbytes = self.compression.upload(
            round, cid, self.flat, self._global, self._exact, codec, out
        )
        self.flat.copy_(model)
        if run is not None and extras:
            run.out = extras
        if len(codec):
            state[STATE_KEY] = codec.state_dict()
        self._bytes["bytes_up"] += nbytes

    def round_stats(self) -> dict[str, Any]:
        """The round's encoded bytes in each compressed direction (they replace the loop's
        wire-format sizes)."""
        return dict(self._bytes)

    def _wire(self, plan: RoundPlan) -> dict[str, Any]:
        """``plan``'s wire JSON (``ctx.config``), made once per plan."""
        if self._wired[0] is not plan:
            self._wired = (plan, plan.to_wire())
        return self._wired[1]

    def _local_run(self, optimizer: torch.optim.Optimizer, ctx: ClientContext) -> LocalRun:
        params, views = federated_parameters(self.model, self.spec, self._global)
        run = LocalRun(
            self.task,
            self.model,
            optimizer,
            ctx,
            self.spec,
            self.flat,
            self._global,
            params,
            views,
            dict(self._plan.tensors),
        )
        run._count_steps()
        return run

    def _personal_tensors(self) -> dict[str, torch.Tensor]:
        fed = set(self.spec.names)
        prefixes = self.task.personal_layers
        return {
            n: t
            for n, t in self.model.state_dict(keep_vars=True).items()
            if n not in fed and any(n == p or n.startswith(p.rstrip(".") + ".") for p in prefixes)
        }

    def state_dict(self) -> dict[str, Any]:
        """Every client's state, spilled ones read back from disk (all in memory at once)."""
        return {"clients": {str(k): v for k, v in self.states.to_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the checkpoint's states back, spilling past the memory budget as they go in."""
        self.states.clear()
        self.states.update({int(k): v for k, v in state.get("clients", {}).items()})
