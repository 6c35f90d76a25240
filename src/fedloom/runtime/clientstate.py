"""A deployed client's state file (``fedloom client --state-file``): what it keeps between rounds,
kept across a restart of the client process.

A client's engine keeps its state in memory: the local DP / DP-SGD accountant, the
compression residual (:data:`~fedloom.compression.link.STATE_KEY`), a strategy's client state
(SCAFFOLD's ``c_i``, personal layers, kept optimizer state). Lost on a restart, the accountant
would start again from zero and the client would under-report the epsilon it has spent.

When it is written: after the client trained a round and encoded its update, *before* it
sends it. A crash between the save and the upload's arrival therefore leaves a file that
counts a round the aggregator may never have seen: the accountant over-counts, never under.
The aggregator hands a restarted client the round's work again; its residual is then the one
from before that round (kept in the file, as :class:`~.coding.ClientCoding` keeps it), so the
re-sent round is the uninterrupted one's. A strategy's client state and the accountant have
that round applied already: re-training it applies it again (the accountant counts it twice).

The file holds no noise seed: the secret is per process (a restarted client draws a new one)
and ``--noise-seed`` is given again on the command line. The format is the checkpoint's
framing (magic, version, sha256 of the payload, then ``torch.save`` bytes read back with
``weights_only=True``); it names the task id, client id, run name and run seed it belongs to,
and a file of another client or run is refused, as is any damage, in one line naming the flag.

``fedloom launch`` passes no state file: it ends every process when one fails, so its clients
never restart alone. The flag is for clients started by hand or by a supervisor that restarts
them (``fedloom client ... --state-file PATH``, :func:`fedloom.deploy.roles.run_client`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

MAGIC = b"fedloom-client-state\n"
VERSION = 1
_HEADER = len(MAGIC) + 2 + 32
#: the keys a state file holds, no more (a test reads them back: no secret among them)
KEYS = ("task_id", "client_id", "run", "seed", "round", "state", "before")
FLAG = "--state-file"


class ClientStateFile:
    """One client's state file: ``identity`` is whose it is; :meth:`save` after each round,
    :meth:`restore` into the engine at check-in.

    Args:
        path: the file; it need not exist (a first start).
        task_id: the run's ``runtime.task_id``.
        client_id: this client's id.
        run: the run's name (the config's ``name``).
    """

    def __init__(self, path: str | os.PathLike[str], *, task_id: str, client_id: int, run: str):
        self.path = Path(path)
        self.identity: dict[str, Any] = {"task_id": task_id, "client_id": client_id, "run": run}
        self.loaded = self._load() if self.path.exists() else None

    # -- writing ------------------------------------------------------------------------------
    def save(self, engine: Any, coding: Any, rnd: int) -> None:
        """Write the engine's state for this client after round ``rnd`` (atomically)."""
        cid = self.identity["client_id"]
        payload = {
            **self.identity,
            "seed": int(engine.seed),
            "round": int(rnd),
            "state": dict(engine.states.get(cid, {})),
            "before": coding.state_dict()["before"],  # what a re-sent round needs
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getbuffer()
        header = MAGIC + VERSION.to_bytes(2, "little") + hashlib.sha256(data).digest()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    # -- reading ------------------------------------------------------------------------------
    def restore(self, engine: Any, coding: Any) -> int | None:
        """Put the loaded state into ``engine`` (built from the aggregator's run seed) and
        ``coding``; the round it was saved after, or None without a file. A file of another
        run seed is refused."""
        saved = self.loaded
        if saved is None:
            return None
        if saved["seed"] != engine.seed:
            raise ConfigError(
                f"{FLAG} {self.path} belongs to a run with seed {saved['seed']}, this "
                f"aggregator's run seed is {engine.seed}: give this run's state file, or a "
                "new path to start afresh"
            )
        self.loaded = None  # once: a later check-in (aggregator restart) keeps the live state
        if saved["state"]:
            engine.states[self.identity["client_id"]] = saved["state"]
        # a restarted client asked for the round it saved last encodes it from the residual it
        # had before that round
        coding.load_state_dict({"before": saved["before"]})
        return int(saved["round"])

    def _load(self) -> dict[str, Any]:
        where = f"{FLAG} {self.path}"
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{where} cannot be read: {e}") from None
        if len(data) < _HEADER or not data.startswith(MAGIC):
            what = "truncated" if data and MAGIC.startswith(data[: len(MAGIC)]) else "not one"
            what = "empty" if not data else what
            raise CheckpointError(f"{where} is not a fedloom client state file ({what})")
        version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "little")
        if version != VERSION:
            raise CheckpointError(f"{where}: unknown format version {version}")
        payload = memoryview(data)[_HEADER:]
        if hashlib.sha256(payload).digest() != data[_HEADER - 32 : _HEADER]:
            raise CheckpointError(f"{where} is corrupt: checksum mismatch (truncated or altered)")
        try:
            saved = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a valid digest over bytes torch cannot read
            raise CheckpointError(f"{where} is corrupt: {type(e).__name__}") from None
        if not isinstance(saved, dict) or sorted(saved) != sorted(KEYS):
            raise CheckpointError(f"{where} is not a client state (keys differ)")
        for key, want in self.identity.items():
            if saved[key] != want:
                raise ConfigError(
                    f"{where} belongs to {key.replace('_', ' ')} {saved[key]!r}, not this "
                    f"client's {want!r}: give this client's own state file, or a new path"
                )
        if not isinstance(saved["state"], dict) or not isinstance(saved["round"], int):
            raise CheckpointError(f"{where} is not a client state (state, round)")
        return saved


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (where the platform lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["ClientStateFile"]
