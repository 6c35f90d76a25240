"""LEAF FEMNIST: handwritten characters already split by writer, the natural federated partition.

Reads LEAF's json shards as written by its preprocessing pipeline. Each writer becomes one
client, so ``natural_partition`` holds one tensor of train indices per writer.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..registry import register_dataset
from .base import TensorDataset
from .download import default_root

NUM_CLASSES = 62  # 10 digits, 26 upper-case, 26 lower-case letters
_PIXELS = 784


def _natural_key(path: Path) -> list[int | str]:
    """Sort ``..._2.json`` before ``..._10.json`` so shard order is the intuitive one."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _read_shard(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(user, x float32 (n, 784), y int64 (n,)) per user of one shard, in its ``users`` order."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read LEAF json: {exc}") from None
    if not isinstance(data, dict) or "users" not in data or "user_data" not in data:
        raise DatasetError(f"{path}: not a LEAF shard (needs keys 'users' and 'user_data')")
    users, counts = data["users"], data.get("num_samples")
    if counts is not None and len(counts) != len(users):
        raise DatasetError(f"{path}: {len(users)} users but {len(counts)} num_samples entries")
    out = []
    for i, user in enumerate(users):
        entry = data["user_data"].get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DatasetError(f"{path}: user {user!r} has no user_data entry with 'x' and 'y'")
        try:
            x = np.asarray(entry["x"], dtype=np.float32)
            y = np.asarray(entry["y"], dtype=np.int64)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: user {user!r}: malformed x or y ({exc})") from None
        x = x.reshape(0, _PIXELS) if x.size == 0 else x
        if x.ndim != 2 or y.ndim != 1 or x.shape != (y.shape[0], _PIXELS):
            raise DatasetError(
                f"{path}: user {user!r}: x has shape {x.shape}, y has {y.shape[0]} labels "
                f"(expected ({y.shape[0]}, {_PIXELS}))"
            )
        if counts is not None and counts[i] != y.shape[0]:
            raise DatasetError(
                f"{path}: user {user!r}: num_samples says {counts[i]}, found {y.shape[0]}"
            )
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DatasetError(f"{path}: user {user!r}: label outside 0-{NUM_CLASSES - 1}")
        out.append((user, x, y))
    return out


def _read_split(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    files = sorted(folder.glob("*.json"), key=_natural_key)
    if not files:
        raise DatasetError(f"{folder}: no LEAF *.json shards found")
    return [item for f in files for item in _read_shard(f)]


@register_dataset("femnist")
def load_femnist(root: str | Path | None = None, invert: bool = True) -> TensorDataset:
    """FEMNIST from ``<root>/train/*.json`` and ``<root>/test/*.json`` (also ``<root>/data/...``).

    LEAF stores 1.0 as the white background; ``invert=True`` flips it to 0 like MNIST, so
    models and normalisation tuned on MNIST behave the same. Shape ``(N, 1, 28, 28)``.
    """
    root = Path(root).expanduser() if root is not None else default_root("femnist")
    if not (root / "train").is_dir() and (root / "data" / "train").is_dir():
        root = root / "data"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"femnist: folder {root / split} not found (LEAF json shards)")
    train, test = _read_split(root / "train"), _read_split(root / "test")
    users = [u for u, _, _ in train]
    if len(set(users)) != len(users):
        dup = sorted(u for u, n in Counter(users).items() if n > 1)
        raise DatasetError(f"{root / 'train'}: writers appear in more than one shard: {dup[:5]}")

    def stack(items: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
        xs = np.concatenate([x for _, x, _ in items] or [np.zeros((0, _PIXELS), np.float32)])
        ys = np.concatenate([y for _, _, y in items] or [np.zeros(0, np.int64)])
        x = torch.from_numpy(xs).reshape(-1, 1, 28, 28)
        return (1.0 - x if invert else x), torch.from_numpy(ys)

    train_x, train_y = stack(train)
    test_x, test_y = stack(test)
    bounds = np.cumsum([0] + [len(y) for _, _, y in train])
    partition = [torch.arange(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    return TensorDataset(
        name="femnist",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=NUM_CLASSES,
        natural_partition=partition,
        meta={"source": str(root), "writers": users, "inverted": invert},
    )
