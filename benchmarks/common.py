"""Helpers shared by the benchmarks: where MNIST is, where results go, how headlines print.

Every benchmark writes one JSON file to ``benchmarks/results/<name>.json`` holding its numbers
and the machine they were taken on (torch version, intra-op threads, CPU count, load average,
date), and ends its output with ``name: value`` headline lines, so a CI job or a person can
read the result from the last lines without parsing JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding MNIST's four idx ``.gz`` files.

    ``root`` if given, else ``$FEDLOOM_MNIST``, else ``../shared/datasets/mnist/raw`` relative
    to the repository root. Exits with a message naming the missing files when they are absent
    (the benchmarks never download).
    """
    if root is None:
        env = os.environ.get("FEDLOOM_MNIST")
        root = env if env else REPO_ROOT.parent / "shared" / "datasets" / "mnist" / "raw"
    path = Path(root).expanduser().resolve()
    for folder in (path, path / "raw"):
        if all((folder / n).is_file() for n in MNIST_FILES):
            return folder
    missing = [n for n in MNIST_FILES if not (path / n).is_file()]
    raise SystemExit(
        f"MNIST not found in {path}: missing {', '.join(missing)}.\n"
        f"Point $FEDLOOM_MNIST (or --mnist-root) at a folder holding the four idx .gz files "
        f"({', '.join(MNIST_FILES)})."
    )


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: software versions, threads, CPUs, load, date, commit."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import fedloom

        info["fedloom"] = fedloom.__version__
    except ImportError:  # pragma: no cover - the benchmarks need fedloom anyway
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_results(name: str, results: Mapping[str, Any]) -> Path:
    """Write ``results`` plus :func:`machine_info` to ``benchmarks/results/<name>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **results}
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def print_headlines(headlines: Mapping[str, Any]) -> None:
    """Print ``name: value`` lines, one per entry; call it last so they end the output.

    Strings are printed as given (format numbers before passing them for a fixed precision),
    ``None`` as ``null``, floats with 4 significant digits.
    """
    sys.stderr.flush()
    lines = []
    for key, value in headlines.items():
        if value is None:
            text = "null"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        lines.append(f"{key}: {text}")
    print("\n".join(lines), flush=True)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence (a thin wrapper so every benchmark uses the same)."""
    return float(statistics.median(values))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def rss_mb() -> float:
    """Current resident set size (Linux ``/proc``), MB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (``ru_maxrss`` is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
