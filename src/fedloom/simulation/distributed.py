"""Simulation across processes, GPUs and nodes with ``torch.distributed`` (launched by torchrun).

    torchrun --nproc_per_node 2 -m fedloom run CONFIG            # one machine
    torchrun --nnodes 2 --node_rank R --master_addr HOST ... -m fedloom run CONFIG

Every rank runs the same :class:`~fedloom.federation.Federation` (same seed, so the same
sampling); rank r trains the round's clients whose id is r modulo the world size, so a
client's per-client state always lives on the same rank. The updates are then exchanged with
one ``all_reduce`` of a (clients x parameters) buffer in which each row is written by exactly
one rank and is zero elsewhere: a sum of one value and zeros is exact, so every rank holds
bit-for-bit the updates a single process would have computed and runs the strategy on them
in plan order. Results are therefore identical to one process for any strategy (robust
aggregators and clustering included), not only for a weighted mean. Metrics travel as JSON
(never pickled), in a uint8 tensor. gloo on CPU, NCCL when training on CUDA, where each rank
trains on its own GPU: ``train.device = "cuda"`` (or ``"auto"``) is ``cuda:LOCAL_RANK``
(:func:`fedloom.accel.resolve_device`), made the rank's current device before the group forms.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..errors import FedloomError
from ..params import ParamSpec
from ..task import Task
from ..update import ClientUpdate
from .engine import InProcessClients


def in_distributed_env() -> bool:
    """True under torchrun (or any launcher setting WORLD_SIZE > 1 and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class DistributedClients(BackendBase):
    """The simulation backend of one rank; see the module doc.

    Args:
        task, seed: as :class:`InProcessClients`.
        backend: the ``torch.distributed`` backend; by default NCCL when the task trains on
            CUDA, else gloo. The process group is created from the environment if needed.
        max_rows: updates exchanged per ``all_reduce`` (bounds the exchange buffer's memory).
        state_memory_mb: this rank's budget for per-client state, as for
            :class:`InProcessClients` (each rank spills its own clients' states).
    """

    def __init__(
        self,
        task: Task,
        seed: int = 0,
        backend: str | None = None,
        max_rows: int = 64,
        state_memory_mb: float | None = None,
    ):
        self.engine = InProcessClients(task, seed, state_memory_mb=state_memory_mb)
        self.task, self.seed, self.max_rows = task, seed, max(1, max_rows)
        self.device = self.engine.flat.device
        if self.device.type == "cuda":  # NCCL's communicators use the current device
            torch.cuda.set_device(self.device)
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group(backend or ("nccl" if self.device.type == "cuda" else "gloo"))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._plan = RoundPlan([])
        self._round = 0
        self._state_on_ranks = False  # does any rank keep per-client state? (told each round)

    @property
    def spec(self) -> ParamSpec:
        return self.engine.spec

    def close(self) -> None:
        """Leave the process group this engine made: a group left to the interpreter's exit
        can abort a rank whose gloo threads are still up. Local, no collective: after a
        failure on one rank the others may be inside a collective that never completes."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def owner(self, cid: int) -> int:
        return cid % self.world

    def available_clients(self, round: int) -> list[int]:
        return self.engine.available_clients(round)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self._plan, self._round = plan, round
        self.engine.distribute(round, plan, global_params)

    def collect(self) -> Iterator[ClientUpdate]:
        clients = list(self._plan.clients)
        for start in range(0, len(clients), self.max_rows):
            yield from self._exchange(clients[start : start + self.max_rows])

    def _exchange(self, cids: list[int]) -> Iterator[ClientUpdate]:
        numel, dtype = self.engine.flat.numel(), self.engine.flat.dtype
        rows = torch.zeros(len(cids), numel, dtype=dtype, device=self.device)
        info: dict[str, Any] = {}
        extras: dict[int, dict[str, torch.Tensor]] = {}
        for i, cid in enumerate(cids):
            if self.owner(cid) != self.rank:
                continue
            u = self.engine.train_client(self._round, cid, self._plan)
            rows[i].copy_(u.params)
            info[str(i)] = {"n": int(u.num_samples), "metrics": u.metrics}
            tensors = u.extras.get("tensors") or {}
            extras[i] = {k: v.detach().clone() for k, v in tensors.items()}
            info[str(i)]["extras"] = sorted(tensors)
        dist.all_reduce(rows)  # one writer per row: the sum is exact
        info["_state"] = bool(self.engine.states)
        merged = self._gather_json(info)
        self._state_on_ranks = bool(merged.pop("_state"))
        names = sorted({n for v in merged.values() for n in v["extras"]})
        extra_rows = {}
        for name in names:  # e.g. SCAFFOLD's control-variate changes, exchanged the same way
            buf = torch.zeros(len(cids), numel, dtype=dtype, device=self.device)
            for i, tensors in extras.items():
                if name in tensors:
                    buf[i].copy_(tensors[name])
            dist.all_reduce(buf)
            extra_rows[name] = buf
        for i, cid in enumerate(cids):
            got = merged.get(str(i))
            if got is None:
                raise FedloomError(f"round {self._round}: no rank returned client {cid}")
            tensors = {n: extra_rows[n][i] for n in got["extras"]}
            extras_out = {"tensors": tensors} if tensors else {}
            yield ClientUpdate(
                cid, rows[i], got["n"], dict(got["metrics"]), self._round, extras=extras_out
            )

    def _gather_json(self, mine: dict[str, Any]) -> dict[str, Any]:
        """Every rank's dict merged (``_state`` or-ed), exchanged as JSON in uint8 tensors."""
        data = torch.tensor(list(json.dumps(mine).encode()), dtype=torch.uint8)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: data.numel()] = data.to(device)
        bufs = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(bufs, padded)
        merged: dict[str, Any] = {"_state": False}
        for buf, n in zip(bufs, sizes):
            part = json.loads(bytes(buf[: int(n)].cpu().tolist()))
            state = merged["_state"] or part.pop("_state", False)
            merged.update(part)
            merged["_state"] = state
        return merged

    def state_dict(self) -> dict[str, Any]:
        """Per-client state lives on the rank that trains the client; this rank's alone can
        not resume the run, so a checkpoint with per-client state anywhere is refused."""
        if self.world > 1 and self._state_on_ranks:
            raise FedloomError(
                "checkpoints of per-client state (SCAFFOLD, FedDyn, Ditto, FedPer heads...) "
                "are not gathered across torchrun ranks; run such strategies in one process "
                "or set output.checkpoint = false"
            )
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)
