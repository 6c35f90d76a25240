"""``train.deterministic``: PyTorch's deterministic algorithms for the length of a run.

Why a context manager: fedloom is also a library used inside someone else's process, so the
global switches it turns (``torch.use_deterministic_algorithms``, cuDNN's autotuner) and the
``CUBLAS_WORKSPACE_CONFIG`` it sets are put back as they were when the run ends. The cuBLAS
setting is needed only on CUDA, and only when the caller has not chosen one; cuBLAS reads it
when it first runs in a process, so it is set before a run builds its engines.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_KEY = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_VALUE = ":4096:8"  # what PyTorch's reproducibility notes prescribe


@contextlib.contextmanager
def deterministic(enabled: bool = True, device: torch.device | None = None) -> Iterator[None]:
    """Within: deterministic algorithms on (an op without one raises), cuDNN's autotuner off
    and, for a CUDA ``device``, cuBLAS's fixed workspace; on leaving, all as before."""
    if not enabled:
        yield
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    set_env = device is not None and device.type == "cuda" and CUBLAS_KEY not in os.environ
    if set_env:
        os.environ[CUBLAS_KEY] = CUBLAS_VALUE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        if set_env:
            os.environ.pop(CUBLAS_KEY, None)
