"""``train.device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or any torch device).

Why a function of its own: the same setting must land on the same device in every process of
a run. ``"auto"`` is CUDA when this machine has a GPU, else the CPU; under torchrun an
unnumbered CUDA device is rank ``LOCAL_RANK``'s own GPU (NCCL needs one GPU per rank), and in
a worker pool each worker takes its own GPU (:func:`worker_device`). The choice itself is the
pure :func:`choose_device`, tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or another torch device such as mps"


def cuda_count() -> int:
    """CUDA devices this process can use (0 without a CUDA build or driver)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_device(spec: str, cuda_devices: int, local_rank: int | None = None) -> torch.device:
    """The device ``spec`` means on a machine with ``cuda_devices`` GPUs.

    ``local_rank`` (torchrun's ``LOCAL_RANK``) numbers an unnumbered CUDA device; a pool
    spreads an unnumbered one over its workers. Raises ``ValueError`` naming what is allowed.
    """
    if spec == "auto":
        spec = "cuda" if cuda_devices > 0 else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"{spec!r} is not a device; allowed: {DEVICE_HELP}") from None
    if device.type != "cuda":
        return device
    if cuda_devices < 1:
        raise ValueError(f"{spec!r}: this machine has no CUDA device (use 'cpu' or 'auto')")
    if device.index is None and local_rank is not None:
        if local_rank >= cuda_devices:
            raise ValueError(
                f"{spec!r} for LOCAL_RANK {local_rank}: this machine has {cuda_devices} CUDA "
                "device(s); start at most that many ranks per node"
            )
        return torch.device("cuda", local_rank)
    if (device.index or 0) >= cuda_devices:
        raise ValueError(f"{spec!r}: this machine has {cuda_devices} CUDA device(s)")
    return device


def resolve_device(
    spec: str | torch.device, env: Mapping[str, str] | None = None
) -> torch.device:
    """``spec`` on this machine, in this process (``LOCAL_RANK`` under torchrun)."""
    if isinstance(spec, torch.device):
        return spec
    env = os.environ if env is None else env
    distributed = int(env.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in env
    rank = int(env["LOCAL_RANK"]) if distributed else None
    return choose_device(spec, cuda_count(), rank)


def worker_device(device: torch.device, worker: int, cuda_devices: int) -> torch.device:
    """The device of pool worker ``worker``: an unnumbered CUDA device means one GPU per
    worker, round robin over the machine's; any other device is every worker's."""
    if device.type == "cuda" and device.index is None and cuda_devices > 0:
        return torch.device("cuda", worker % cuda_devices)
    return device
