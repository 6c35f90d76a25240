"""Atomic, checksummed checkpoints of a run, loaded without unpickling arbitrary objects.

A checkpoint file is a header and a payload::

    b"fedloom-checkpoint\\n"   magic, so a file that is not ours is named as such
    version                   2 bytes, little-endian (now 1)
    sha256(payload)           32 bytes
    payload                   what torch.save wrote

The digest is checked before ``torch.load`` sees a byte, so truncation, a flipped bit
anywhere (header, pickle or tensor data), appended bytes or garbage are one clear
:class:`CheckpointError` naming the file, never a traceback from deep inside torch nor,
worse, a silently changed weight (torch's own zip format checks no tensor data). The payload
is then read with ``weights_only=True`` (tensors, numbers, strings, lists, dicts) and its
structure checked against what :meth:`Federation.state_dict` writes.

Files written before checksums existed (a bare ``torch.save`` zip) are refused, not
accepted: nothing could tell a flipped tensor byte in one from a good file. Start a fresh
run (``--overwrite``) to replace such a checkpoint.

Saves stay atomic: a temporary file beside the target, fsynced, then ``os.replace``, so a
crash mid-write leaves the previous checkpoint intact. The payload is built in memory to be
hashed, so a save briefly holds the state twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

MAGIC = b"fedloom-checkpoint\n"
VERSION = 1
_HEADER = len(MAGIC) + 2 + 32
_ZIP = b"PK\x03\x04"  # what a bare torch.save file starts with

# What Federation.state_dict() holds (more keys are allowed, e.g. the recorder's "config").
EXPECTED: dict[str, type | tuple[type, ...]] = {
    "round": int,
    "seed": int,
    "params": torch.Tensor,
    "strategy": dict,
    "backend": dict,
    "history": list,
    "last_eval": dict,
    "rng": dict,
}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, with the header above."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = MAGIC + VERSION.to_bytes(2, "little") + hashlib.sha256(payload).digest()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify and read a checkpoint; any damage is a :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    payload = _verified_payload(path, data)
    state: dict[str, Any]
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a valid digest over bytes torch cannot read: not a state of ours
        raise CheckpointError(f"checkpoint {path} is corrupt: {type(e).__name__}") from None
    _check_structure(path, state)
    return state


def _verified_payload(path: Path, data: bytes) -> memoryview:
    corrupt = f"checkpoint {path} is corrupt"
    if data.startswith(_ZIP):
        raise CheckpointError(
            f"checkpoint {path} predates checksums (a bare torch.save file) and cannot be "
            "verified: start a fresh run with --overwrite"
        )
    if len(data) < _HEADER or not data.startswith(MAGIC):
        truncated = data and MAGIC.startswith(data[: len(MAGIC)])
        what = "empty" if not data else "truncated header" if truncated else "not a fedloom file"
        raise CheckpointError(f"{corrupt}: {what}")
    version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "little")
    if version != VERSION:
        raise CheckpointError(f"{corrupt}: unknown format version {version} (expected {VERSION})")
    payload = memoryview(data)[_HEADER:]
    if hashlib.sha256(payload).digest() != data[_HEADER - 32 : _HEADER]:
        raise CheckpointError(f"{corrupt}: checksum mismatch (truncated or altered)")
    return payload


def _check_structure(path: Path, state: Any) -> None:
    """A well-formed file holding something other than a run's state is named, not loaded."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a run state")
    problems = []
    for key, kind in EXPECTED.items():
        value = state.get(key)
        if key not in state:
            problems.append(f"{key} missing")
        elif not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{key} is a {type(value).__name__}")
    if isinstance(state.get("rng"), dict) and not isinstance(
        state["rng"].get("torch"), torch.Tensor
    ):
        problems.append("rng.torch is not a tensor")
    if not isinstance(state.get("config", ""), str):
        problems.append("config is not JSON text")
    if problems:
        raise CheckpointError(f"checkpoint {path} is not a run state: {', '.join(problems)}")
