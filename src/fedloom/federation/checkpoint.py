"""Atomic checkpoints of a run, loaded without unpickling arbitrary objects.

A checkpoint is our own file (never bytes from another party), written with ``torch.save`` to
a temporary name and renamed into place, so a crash mid-write leaves the previous checkpoint
intact. It is read back with ``weights_only=True``: tensors, numbers, strings, lists, dicts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
    return torch.load(path, map_location="cpu", weights_only=True)
