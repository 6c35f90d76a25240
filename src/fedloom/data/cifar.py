"""CIFAR-10 from its *binary* release (``cifar-10-binary.tar.gz``), never the pickled one.

Each ``.bin`` file is a run of 3,073-byte records: one label byte, then 3,072 pixel bytes (1,024
red, 1,024 green, 1,024 blue, row-major 32x32). Reading them is a reshape, so nothing from the
internet is ever unpickled. The download is checked against the archive's md5 and only the six
known members are read out of it (``extractfile``, never ``extractall``), so a crafted archive
cannot write outside the dataset folder.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..registry import register_dataset
from .base import TensorDataset
from .download import default_root, ensure_files

ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32
# per-channel mean and std of pixels/255 over the 50,000 training images
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> (uint8 images ``(N, 3, 32, 32)``, uint8 labels ``(N,)``)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    if raw.size == 0 or raw.size % RECORD:
        raise DatasetError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records"
        )
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise DatasetError(f"{path}: label {labels.max()} outside 0-9 (not a CIFAR-10 file?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _find_dir(root: Path) -> Path | None:
    names = (*TRAIN_FILES, TEST_FILE)
    for folder in (root, root / FOLDER):
        if all((folder / n).is_file() for n in names):
            return folder
    return None


def _extract(archive: Path, dest: Path) -> None:
    """Read the six batch files out of the archive into ``dest`` (each written atomically)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in (*TRAIN_FILES, TEST_FILE):
                member = tar.extractfile(f"{FOLDER}/{name}")
                if member is None:
                    raise DatasetError(f"{archive}: {FOLDER}/{name} is not a regular file")
                tmp = dest / f".{name}.part"
                tmp.write_bytes(member.read())
                os.replace(tmp, dest / name)
    except KeyError as e:
        raise DatasetError(f"{archive}: no member {e} (not the CIFAR-10 binary archive?)") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{archive}: cannot read the archive: {e}") from None


def _images(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


@register_dataset("cifar10")
def load_cifar10(
    root: str | Path | None = None,
    download: bool = False,
    mirrors: Sequence[str] | None = None,
    archive_md5: str = ARCHIVE_MD5,
) -> TensorDataset:
    """CIFAR-10, 50k train / 10k test 32x32 colour images, from its binary ``.bin`` files.

    The files may sit in ``root`` (default ``$FEDLOOM_DATA/cifar10``) or ``root/
    cifar-10-batches-bin`` (the archive's own folder); ``download=True`` fetches
    ``cifar-10-binary.tar.gz`` from ``mirrors`` into ``root``, checks ``archive_md5`` and reads
    the batch files out of it. Pixels are scaled to [0, 1] and normalised per channel.
    """
    root = Path(root).expanduser() if root is not None else default_root("cifar10")
    folder = _find_dir(root)
    if folder is None:
        if not download:
            raise DatasetError(
                f"cifar10: {', '.join((*TRAIN_FILES, TEST_FILE))} not found in {root} (or "
                f"{root / FOLDER}); pass download=True (data.download = true) to fetch "
                f"{ARCHIVE}, or point root at a folder that holds them"
            )
        mirrors = [mirrors] if isinstance(mirrors, str) else list(mirrors or MIRRORS)
        paths = ensure_files(root, {ARCHIVE: archive_md5}, mirrors)
        _extract(paths[ARCHIVE], root / FOLDER)
        folder = root / FOLDER
    train = [read_cifar_bin(folder / n) for n in TRAIN_FILES]
    test_images, test_labels = read_cifar_bin(folder / TEST_FILE)
    return TensorDataset(
        name="cifar10",
        train_x=_images(np.concatenate([t[0] for t in train])),
        train_y=torch.from_numpy(np.concatenate([t[1] for t in train]).astype(np.int64)),
        test_x=_images(test_images),
        test_y=torch.from_numpy(test_labels.astype(np.int64)),
        num_classes=10,
        meta={"source": str(folder), "normalisation": {"mean": MEAN, "std": STD}},
    )


# asmallbit's ``"type": "cifar"``
register_dataset("cifar", load_cifar10)
