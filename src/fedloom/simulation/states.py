"""Per-client state kept within a memory budget, the least recently used spilled to disk.

The simulation keeps state for every client that has some (SCAFFOLD's ``c_i``, FedDyn's
gradient, Ditto's personal model, FedPer heads, kept optimizer state). Each is about one model
in size, so 10,000 clients of a 6.6 MB CNN would need 66 GB of memory. :class:`ClientStates`
is the mapping the engine keeps them in: with ``memory_mb`` set, once the states in memory
hold more tensor bytes than that, the least recently used clients' states are written to a
spill directory (one ``torch.save`` file per client, written to a temporary name and renamed,
so a crash never leaves a half-written file under a client's name) and read back, with
``torch.load(weights_only=True)``, when the client is next touched. Reading never unpickles
arbitrary objects, so a state must be made of what that loader accepts: tensors, Python
numbers, strings, bytes, ``None``, dtypes and devices, in nested dicts, lists, tuples and sets
(optimizer ``state_dict()`` s are). With a budget, a state holding anything else is refused
when it is stored, naming the client, rather than failing rounds later when it is read back.

Spilling and reading back are exact (the same bytes), so a run with a budget gives
bit-identical results to one without. Without a budget (the default) nothing is written and
nothing checked: the mapping behaves as the plain dict it replaces.

The spill directory is private to one mapping (``tempfile.mkdtemp`` under ``spill_dir``, or
under the system's temporary directory, which ``$TMPDIR`` moves; put it on a disk, not a
tmpfs, or spilling saves no memory), made at the first spill and removed by :meth:`close`, on
garbage collection or at interpreter exit. The files are a cache, not a checkpoint: resuming
a run goes through ``state_dict``. Not thread-safe: the engine touches it from one thread.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ClientStateError

MB = 1024 * 1024

# What torch.load(weights_only=True) reads back (checked on torch 2.13); exact types, because
# subclasses (defaultdict, namedtuples, numpy scalars...) are what it refuses.
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)
_LEAVES = (
    torch.Tensor,
    torch.nn.Parameter,
    int,
    float,
    bool,
    complex,
    str,
    bytes,
    bytearray,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
)


def _remove_dir(path: Path, owner: int) -> None:
    """Remove the spill directory, in the process that made it only: a forked child (a
    process-pool worker) inherits the finalizer and must not delete its parent's files."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def state_bytes(obj: Any) -> int:
    """Tensor bytes (``numel * element_size``) held in ``obj``, nested containers included.

    What the budget counts: the tensors are what grows with the model; the Python objects
    around them are a few hundred bytes a client."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple | set):
        return sum(state_bytes(v) for v in obj)
    return 0


def _unloadable(obj: Any, where: str = "state") -> str | None:
    """Where in ``obj`` something lies that ``torch.load(weights_only=True)`` refuses, and its
    type; None when everything can be read back."""
    kind = type(obj)
    if kind in _LEAVES:
        return None
    if kind in (dict, collections.OrderedDict):
        for k, v in obj.items():
            bad = _unloadable(k, f"{where} key {k!r}") or _unloadable(v, f"{where}[{k!r}]")
            if bad:
                return bad
        return None
    if kind in _CONTAINERS:
        for i, v in enumerate(obj):
            bad = _unloadable(v, f"{where}[{i}]")
            if bad:
                return bad
        return None
    return f"{where}: {kind.__module__}.{kind.__qualname__}"


class ClientStates(MutableMapping[int, dict[str, Any]]):
    """Client id -> that client's state dict, in memory up to ``memory_mb``, the rest on disk.

    Reading a state (``states[cid]``, ``states.get(cid)``) makes it the most recently used and
    returns the live object: one read from disk moves back into memory (its file is deleted),
    and may spill others. Changes made to a state in place are kept, since the object in
    memory is what gets written when it is spilled; storing it again (``states[cid] = state``,
    as the engine does after training) also re-measures its size. The most recently used
    state is never spilled, so after each store or read memory holds at most ``memory_mb`` or
    one state, whichever is larger (while storing, briefly one state more). Iteration,
    ``len`` and ``in`` never touch the disk; iteration is in order of first insertion, as for
    a dict.

    Args:
        memory_mb: budget, in MiB of tensor bytes, for the states kept in memory; None (the
            default) keeps them all in memory and never writes a file.
        spill_dir: folder under which the private spill directory is made; by default the
            system's temporary directory.

    Counters, for benchmarks and logs: ``spilled`` (states written), ``loaded`` (states read
    back, by access or by :meth:`to_dict`), ``bytes_in_memory`` and ``peak_bytes_in_memory``
    (tensor bytes of the states in memory), ``bytes_on_disk``; :meth:`stats` has them all.
    """

    def __init__(
        self, memory_mb: float | None = None, spill_dir: str | os.PathLike[str] | None = None
    ):
        if memory_mb is not None and not memory_mb > 0:
            raise ValueError(f"memory_mb must be > 0 or None, got {memory_mb!r}")
        self.memory_mb = memory_mb
        self.budget = None if memory_mb is None else int(memory_mb * MB)
        self.spill_root = None if spill_dir is None else Path(spill_dir)
        self._order: dict[int, None] = {}  # every client, in order of first insertion
        self._memory: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._size: dict[int, int] = {}  # tensor bytes of each state in memory
        self._disk: dict[int, int] = {}  # spilled client -> its tensor bytes
        self._dir: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.spilled = self.loaded = 0
        self.bytes_in_memory = self.peak_bytes_in_memory = self.bytes_on_disk = 0

    # -- the mapping ----------------------------------------------------------------------
    def __getitem__(self, cid: int) -> dict[str, Any]:
        if cid in self._memory:
            self._memory.move_to_end(cid)
            return self._memory[cid]
        if cid not in self._disk:
            raise KeyError(cid)
        state = self._read(cid)
        self._drop_file(cid)
        self._keep(cid, state)
        self._evict()
        return state

    def __setitem__(self, cid: int, state: dict[str, Any]) -> None:
        if self.budget is not None:
            self._check(cid, state)
        if cid in self._disk:
            self._drop_file(cid)
        self.bytes_in_memory -= self._size.pop(cid, 0)
        self._order.setdefault(cid)
        self._keep(cid, state)
        self._evict()

    def __delitem__(self, cid: int) -> None:
        if cid in self._memory:
            del self._memory[cid]
            self.bytes_in_memory -= self._size.pop(cid)
        elif cid in self._disk:
            self._drop_file(cid)
        else:
            raise KeyError(cid)
        del self._order[cid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, cid: object) -> bool:
        return cid in self._order  # the Mapping default would read spilled states back

    def __repr__(self) -> str:
        budget = "unlimited" if self.memory_mb is None else f"{self.memory_mb:g} MiB"
        return (
            f"ClientStates({len(self)} states, {len(self._memory)} in memory "
            f"({self.bytes_in_memory / MB:.1f} MiB of {budget}), {len(self._disk)} on disk)"
        )

    def clear(self) -> None:
        """Forget every state; spilled files are deleted without being read back."""
        for cid in list(self._disk):
            self._drop_file(cid)
        self._order.clear()
        self._memory.clear()
        self._size.clear()
        self.bytes_in_memory = 0

    # -- beyond a mapping -----------------------------------------------------------------
    def to_dict(self) -> dict[int, dict[str, Any]]:
        """Every state, in insertion order, as a plain dict (what a checkpoint pickles).

        Spilled states are read from disk without moving back into memory or changing the
        order of use, so the returned dict can be dropped after saving and the budget holds
        again; but while it lives, all states are in memory at once, which for a large model
        and many clients may not fit: checkpoints of huge spilled state are costly (turn them
        off with ``output.checkpoint = false``)."""
        return {
            cid: self._memory[cid] if cid in self._memory else self._read(cid)
            for cid in self._order
        }

    def stats(self) -> dict[str, Any]:
        """Counts and bytes, for a benchmark's report or a log line."""
        return {
            "memory_mb": self.memory_mb,
            "states": len(self),
            "in_memory": len(self._memory),
            "on_disk": len(self._disk),
            "bytes_in_memory": self.bytes_in_memory,
            "peak_bytes_in_memory": self.peak_bytes_in_memory,
            "bytes_on_disk": self.bytes_on_disk,
            "spilled": self.spilled,
            "loaded": self.loaded,
        }

    @property
    def path(self) -> Path | None:
        """The spill directory, once something has been spilled (else None)."""
        return self._dir

    def close(self) -> None:
        """Forget every state and remove the spill directory. The mapping stays usable (a
        later spill makes a new directory)."""
        self.clear()
        if self._finalizer is not None:
            self._finalizer()  # rmtree, once; also what garbage collection and exit would do
        self._dir = self._finalizer = None

    def __enter__(self) -> ClientStates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _keep(self, cid: int, state: dict[str, Any]) -> None:
        """Put ``state`` in memory as the most recently used."""
        self._memory[cid] = state
        self._memory.move_to_end(cid)
        size = self._size[cid] = state_bytes(state)
        self.bytes_in_memory += size
        self.peak_bytes_in_memory = max(self.peak_bytes_in_memory, self.bytes_in_memory)

    def _evict(self) -> None:
        """Spill the least recently used states until the budget holds (or one is left).

        A state leaves memory only once its file is written: if writing fails, it stays."""
        if self.budget is None:
            return
        while self.bytes_in_memory > self.budget and len(self._memory) > 1:
            cid, state = next(iter(self._memory.items()))
            self._write(cid, state)
            del self._memory[cid]
            self.bytes_in_memory -= self._size.pop(cid)

    def _check(self, cid: int, state: Any) -> None:
        bad = _unloadable(state)
        if bad is not None:
            raise ClientStateError(
                f"client {cid}'s state can not be spilled to disk and read back safely: "
                f"{bad} is not something torch.load(weights_only=True) reads. Keep client "
                "state to tensors, Python numbers, strings and dicts/lists/tuples of them, "
                "or run without a state memory budget (train.state_memory_mb)"
            )

    def _spill_dir(self) -> Path:
        if self._dir is None:
            if self.spill_root is not None:
                self.spill_root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="fedloom-states-", dir=self.spill_root))
            self._finalizer = weakref.finalize(self, _remove_dir, self._dir, os.getpid())
        return self._dir

    def _file(self, cid: int) -> Path:
        return self._spill_dir() / f"client-{cid}.pt"

    def _write(self, cid: int, state: dict[str, Any]) -> None:
        self._check(cid, state)  # again: it may have been changed in place since it was set
        path = self._file(cid)
        tmp = path.with_name(path.name + ".tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = self._disk[cid] = state_bytes(state)
        self.bytes_on_disk += size
        self.spilled += 1

    def _read(self, cid: int) -> dict[str, Any]:
        path = self._file(cid)
        state: dict[str, Any]
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:
            raise ClientStateError(
                f"client {cid}'s spilled state {path} could not be read back with "
                f"torch.load(weights_only=True): {type(e).__name__}: {e}"
            ) from e
        self.loaded += 1
        return state

    def _drop_file(self, cid: int) -> None:
        self.bytes_on_disk -= self._disk.pop(cid)
        self._file(cid).unlink(missing_ok=True)
