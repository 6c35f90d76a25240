"""Where and how the arithmetic runs: the device (``train.device``), mixed precision
(``train.precision``) and deterministic algorithms (``train.deterministic``).

Below every engine, so the sequential, vectorised, pool and torchrun engines, the runtime
client and evaluation all resolve these three settings the same way.
"""

from .determinism import deterministic
from .device import DEVICE_HELP, choose_device, cuda_count, resolve_device, worker_device
from .precision import PRECISIONS, MixedPrecision, precision_problem

__all__ = [
    "DEVICE_HELP",
    "PRECISIONS",
    "MixedPrecision",
    "choose_device",
    "cuda_count",
    "deterministic",
    "precision_problem",
    "resolve_device",
    "worker_device",
]
