"""The round loop, its states and callbacks, and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import Backend, Callback, Federation, RoundState, RunResult

__all__ = [
    "Backend",
    "Callback",
    "Federation",
    "RoundState",
    "RunResult",
    "load_checkpoint",
    "save_checkpoint",
]
