"""A folder of images, one subfolder per class (asmallbit's ``dog-and-cat`` kind), via Pillow.

``root/train/<class>/*`` and ``root/test/<class>/*`` are used as given; a ``root`` holding
only class folders is split into train and test by a seeded, per-class ``test_fraction``.
Classes are the sorted folder names, so every process labels them the same way. Images are
converted to RGB (or L), resized to ``size`` x ``size`` and held as one tensor, like every
fedloom dataset, so the clients' training indexes it as the other datasets do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..registry import register_dataset
from .base import TensorDataset

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        paths = sorted((folder / name).rglob("*"))
        out.extend((p, label) for p in paths if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return out


def _read(files: list[tuple[Path, int]], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    channels = 3 if mode == "RGB" else 1
    x = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                small = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                x[i] = np.asarray(small).reshape(size, size, channels)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DatasetError(f"{path}: not a readable image: {e}") from None
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
    images = images.sub_(0.5).div_(0.5)  # [-1, 1], the usual normalisation without dataset stats
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return images.contiguous(), labels


def _split(
    files: list[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, a seeded share ``fraction`` of the files (at least one, if any) for testing."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({lbl for _, lbl in files}):
        mine = [f for f in files if f[1] == label]
        order = rng.permutation(len(mine))
        n_test = max(1, round(fraction * len(mine))) if len(mine) > 1 else 0
        test += [mine[i] for i in sorted(order[:n_test])]
        train += [mine[i] for i in sorted(order[n_test:])]
    return train, test


@register_dataset("image_folder")
def load_image_folder(
    root: str | Path | None = None,
    size: int = 64,
    grayscale: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TensorDataset:
    """Images in class subfolders: ``root/{train,test}/<class>/``, or ``root/<class>/`` split.

    Args:
        size: every image is resized to ``size`` x ``size``.
        grayscale: one channel instead of three.
        test_fraction: the share of each class held out when ``root`` has no ``train/test``.
        seed: seeds that split (the run seed, from a config).
    """
    if root is None:
        raise DatasetError("image_folder: set data.root to the folder holding the class folders")
    if size < 1 or not 0 < test_fraction < 1:
        raise DatasetError(f"image_folder: size {size} must be >= 1, test_fraction in (0, 1)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"image_folder: {base} is not a folder")
    mode = "L" if grayscale else "RGB"
    if (base / "train").is_dir() and (base / "test").is_dir():
        classes = _classes(base / "train")
        if (extra := set(_classes(base / "test")) - set(classes)) != set():
            raise DatasetError(f"{base / 'test'}: classes {sorted(extra)} not in train/")
        train, test = _files(base / "train", classes), _files(base / "test", classes)
    else:
        classes = _classes(base)
        train, test = _split(_files(base, classes), test_fraction, seed)
    if len(classes) < 2 or not train or not test:
        raise DatasetError(
            f"image_folder: {base} needs at least 2 class folders of images and images for both "
            f"train and test (found classes {classes}, {len(train)} train, {len(test)} test)"
        )
    train_x, train_y = _read(train, size, mode)
    test_x, test_y = _read(test, size, mode)
    return TensorDataset(
        name="image_folder",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(classes),
        meta={"source": str(base), "classes": classes, "size": size},
    )


# asmallbit's ``"type": "dog-and-cat"``: its custom dataset is exactly a two-class image folder
register_dataset("dog-and-cat", load_image_folder)
