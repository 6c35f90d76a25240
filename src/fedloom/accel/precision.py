"""``train.precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the local training.

Why here and not in each engine: the sequential loop, a user's own ``train_an_epoch``, the
vectorised step and the runtime client all train through one :class:`MixedPrecision` (the
client's ``ctx.amp``): autocast around the forward pass and, for fp16, a fresh gradient
scaler per client, as ``torch.amp`` prescribes. Parameters, optimizer state and the
aggregated global model stay float32; only the arithmetic inside autocast is narrower.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

#: precision name -> autocast dtype (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def precision_problem(precision: str, device_type: str) -> str | None:
    """Why ``precision`` cannot train on a ``device_type`` device, or None if it can."""
    if precision not in PRECISIONS:
        return f"{precision!r} is not one of {', '.join(PRECISIONS)}"
    if PRECISIONS[precision] is None:
        return None
    if not torch.amp.is_autocast_available(device_type):
        return f"{precision!r}: torch has no autocast on {device_type!r}; use 'fp32'"
    return None


class MixedPrecision:
    """Autocast (and fp16's gradient scaler) for one client's local training.

    The default loop calls ``with amp.autocast(): loss = ...``, ``amp.backward(loss)``,
    ``amp.step(optimizer)``; with fp32 they are the plain ``loss.backward()`` and
    ``optimizer.step()``. A scaler's step skips an update whose gradients overflowed and
    reads that flag from the device once per step, as ``torch.amp.GradScaler`` always does.
    """

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu"):
        device = torch.device(device)
        why = precision_problem(precision, device.type)
        if why is not None:
            raise ValueError(f"precision {why}")
        self.precision, self.device_type = precision, device.type
        self.dtype = PRECISIONS[precision]
        self.scaler: Any = (
            torch.amp.GradScaler(device.type) if precision == "fp16" else None
        )

    @property
    def enabled(self) -> bool:
        """True unless fp32 (nothing is autocast)."""
        return self.dtype is not None

    def fresh(self) -> MixedPrecision:
        """This setting for the next client: a new scaler (its scale starts over, as a
        client's optimizer does), or this very object when there is none to reset."""
        if self.scaler is None:
            return self
        return MixedPrecision(self.precision, torch.device(self.device_type))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context: autocast to the narrow dtype, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, of the scaled loss under fp16."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 unscaled first, skipped on overflow, then the
        scale is updated."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def __repr__(self) -> str:
        return f"MixedPrecision({self.precision!r}, {self.device_type!r})"
