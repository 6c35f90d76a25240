"""Fetching dataset files over HTTP with md5 checks, atomic writes and mirror fallback.

Only the standard library is used and nothing touches the network at import time. A file is
written under a temporary name and renamed into place only once its md5 matched, so an
interrupted or corrupt download never leaves a plausible-looking file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DatasetError

_CHUNK = 1 << 20


def default_root(name: str) -> Path:
    """``$FEDLOOM_DATA/<name>`` if that variable is set, else ``~/.cache/fedloom/<name>``."""
    base = os.environ.get("FEDLOOM_DATA")
    return (Path(base) if base else Path.home() / ".cache" / "fedloom") / name


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in chunks so large archives are not held in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str, dest_path: str | Path, md5: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest_path`` unless a file with the right md5 is already there.

    Raises ``DatasetError`` naming the url and file on a network error or an md5 mismatch; a
    mismatching download is deleted (and an existing bad file is replaced only by a good one).
    """
    dest = Path(dest_path)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "fedloom"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise DatasetError(
                f"{dest}: md5 mismatch for download from {url}: expected {md5}, got {actual}; "
                "the downloaded file was removed"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset cache is meant to be shared
        os.replace(tmp, dest)
    except DatasetError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else str(exc)
        raise DatasetError(f"{dest}: could not download {url}: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def ensure_files(
    root: str | Path,
    files: Mapping[str, str | None],
    mirrors: Sequence[str],
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Make each ``name`` in ``files`` (name -> md5) exist under ``root``, trying mirrors in order.

    Returns name -> path. Raises ``DatasetError`` listing every failed attempt when no mirror
    delivered a file.
    """
    root = Path(root)
    paths: dict[str, Path] = {}
    for name, md5 in files.items():
        errors: list[str] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                paths[name] = download(url, root / name, md5=md5, timeout=timeout)
                break
            except DatasetError as exc:
                errors.append(str(exc))
        else:
            tried = "\n  ".join(errors) or "no mirrors given"
            raise DatasetError(f"{root / name}: could not obtain the file:\n  {tried}")
    return paths
