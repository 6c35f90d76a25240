"""Reader for the idx format of MNIST-style files, in plain numpy (no torchvision).

Every header field is checked against the file's real size, so a truncated download or a
file of another kind fails with a message naming the file rather than a reshape error.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the file starts with the gzip magic (not by suffix)."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file: {exc}") from None
    if buf[:2] != _GZIP_MAGIC:
        return buf
    try:
        return gzip.decompress(buf)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Parse an idx file (``.gz`` or uncompressed) of unsigned bytes into a read-only uint8 array.

    ``magic`` (``IMAGES_MAGIC`` or ``LABELS_MAGIC``) pins the expected kind of file, so swapping
    the image and label files is caught here.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DatasetError(f"{path}: {len(buf)} bytes is too short for an idx header")
    found = struct.unpack(">I", buf[:4])[0]
    if buf[0] != 0 or buf[1] != 0 or buf[2] != _UBYTE or buf[3] == 0:
        raise DatasetError(
            f"{path}: bad idx magic number {found} (0x{found:08x}); expected "
            f"{magic if magic is not None else '0x000008NN'} (unsigned-byte idx data)"
        )
    if magic is not None and found != magic:
        raise DatasetError(f"{path}: idx magic number {found}, expected {magic}")
    ndim = buf[3]
    offset = 4 + 4 * ndim
    if len(buf) < offset:
        raise DatasetError(f"{path}: truncated idx header ({len(buf)} bytes, need {offset})")
    dims = struct.unpack(f">{ndim}I", buf[4:offset])
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(buf) - offset
    if actual != expected:
        kind = "truncated" if actual < expected else "trailing bytes in"
        raise DatasetError(
            f"{path}: {kind} idx data: header says dims {dims} = {expected} bytes, "
            f"file holds {actual} bytes after the header"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=offset).reshape(dims)


def read_idx_images(path: str | Path) -> np.ndarray:
    """Images as uint8 ``(N, rows, cols)``; rejects anything but a 3-d idx image file."""
    return read_idx(path, IMAGES_MAGIC)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Labels as uint8 ``(N,)``; rejects anything but a 1-d idx label file."""
    return read_idx(path, LABELS_MAGIC)
