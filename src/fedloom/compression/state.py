"""What a client's codecs keep between rounds (the error-feedback residual).

Plain named float32 tensors, so the state travels in a checkpoint or a client-state spill as
any tensor dict does (no pickle of codec objects), and ``load_state_dict`` resumes bit for
bit.
"""

from __future__ import annotations

import torch


class CodecState:
    """Named 1-D float32 tensors owned by one client's chain."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor | None:
        return self._tensors.get(name)

    def set(self, name: str, value: torch.Tensor) -> None:
        self._tensors[name] = value

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies, so a checkpoint taken now is not changed by the next round."""
        return {k: v.clone() for k, v in sorted(self._tensors.items())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        loaded: dict[str, torch.Tensor] = {}
        for name, value in state.items():
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
                raise ValueError(f"codec state {name!r}: expected a float32 tensor")
            if value.dim() != 1:
                raise ValueError(f"codec state {name!r}: expected a 1-D tensor")
            loaded[str(name)] = value.detach().clone()
        self._tensors = loaded

    def __len__(self) -> int:
        return len(self._tensors)
