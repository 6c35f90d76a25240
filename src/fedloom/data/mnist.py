"""MNIST and Fashion-MNIST from their original idx ``.gz`` files (torchvision's names and md5s)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..registry import register_dataset
from .base import TensorDataset
from .download import default_root, ensure_files
from .idx import read_idx_images, read_idx_labels

_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# name -> (md5 of each .gz file, default mirrors, (mean, std) of pixels/255 over the train set)
_SOURCES: dict[str, tuple[dict[str, str], list[str], tuple[float, float]]] = {
    "mnist": (
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
        (0.1307, 0.3081),
    ),
    "fashion_mnist": (
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        (0.2860, 0.3530),
    ),
}


def normalise_images(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` of ``(x/255 - mean)/std``."""
    x = torch.from_numpy(np.asarray(images).astype(np.float32))  # a writeable copy
    return x.div_(255.0).sub_(mean).div_(std).unsqueeze(1)


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    """``root`` or ``root/raw``, whichever holds every file; ``None`` when neither does."""
    for folder in (root, root / "raw"):
        if all((folder / n).is_file() for n in names):
            return folder
    return None


def _load(
    name: str, root: str | Path | None, download: bool, mirrors: Sequence[str] | None
) -> TensorDataset:
    md5s, default_mirrors, (mean, std) = _SOURCES[name]
    root = Path(root).expanduser() if root is not None else default_root(name)
    folder = _find_dir(root, list(md5s))
    if folder is None:
        if not download:
            missing = [n for n in md5s if not any((d / n).is_file() for d in (root, root / "raw"))]
            raise DatasetError(
                f"{name}: files not found in {root} (or {root / 'raw'}): {', '.join(missing)}; "
                f"pass download=True to fetch them, or point root at a folder that holds them"
            )
        mirrors = [mirrors] if isinstance(mirrors, str) else list(mirrors or default_mirrors)
        ensure_files(root, md5s, mirrors)
        folder = root
    arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (img_name, lbl_name) in _SPLITS.items():
        images, labels = read_idx_images(folder / img_name), read_idx_labels(folder / lbl_name)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise DatasetError(
                f"{folder / img_name}: images of shape {images.shape} do not pair with "
                f"{labels.shape[0]} labels in {folder / lbl_name} (expected (N, 28, 28))"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{folder / lbl_name}: label {labels.max()} outside 0-9")
        y = torch.from_numpy(labels.astype(np.int64))
        arrays[split] = (normalise_images(images, mean, std), y)
    return TensorDataset(
        name=name,
        train_x=arrays["train"][0],
        train_y=arrays["train"][1],
        test_x=arrays["test"][0],
        test_y=arrays["test"][1],
        num_classes=10,
        meta={"source": str(folder), "normalisation": {"mean": mean, "std": std}},
    )


@register_dataset("mnist")
def load_mnist(
    root: str | Path | None = None, download: bool = False, mirrors: Sequence[str] | None = None
) -> TensorDataset:
    """MNIST digits, 60k train / 10k test, from ``root`` (default ``$FEDLOOM_DATA/mnist``).

    Files may sit in ``root`` or ``root/raw`` (torchvision's layout); ``download=True`` fetches
    missing ones into ``root`` from ``mirrors`` (tried in order) and checks their md5.
    """
    return _load("mnist", root, download, mirrors)


@register_dataset("fashion_mnist")
def load_fashion_mnist(
    root: str | Path | None = None, download: bool = False, mirrors: Sequence[str] | None = None
) -> TensorDataset:
    """Fashion-MNIST, 60k train / 10k test, from ``root`` (default ``$FEDLOOM_DATA/fashion_mnist``).

    Zalando's drop-in replacement for MNIST: same shapes and files, much harder to saturate.
    """
    return _load("fashion_mnist", root, download, mirrors)
