"""TensorBoard scalars for per-round metrics, grouped so related curves share a panel.

Tag mapping (step = round)::

    train_loss, train_<x>        -> train/loss, train/<x>
    accuracy                     -> eval/accuracy
    test_loss, test_<x>          -> eval/loss, eval/<x>
    eval_<x>                     -> eval/<x>
    bytes_up, bytes_down         -> comm/bytes_up, comm/bytes_down
    clients, seconds             -> round/clients, round/seconds
    a key containing "/"         -> unchanged
    anything else                -> metrics/<key>

``round`` itself is the step, not a scalar. Non-numeric values (strings, lists, bools) are
skipped, because one odd metric must not stop a training run.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

_FIXED = {
    "accuracy": "eval/accuracy",
    "bytes_up": "comm/bytes_up",
    "bytes_down": "comm/bytes_down",
    "clients": "round/clients",
    "seconds": "round/seconds",
}
_PREFIXES = (("train_", "train/"), ("test_", "eval/"), ("eval_", "eval/"))


def scalar_tag(key: str) -> str:
    """The TensorBoard tag for a metric key (see the module docstring for the mapping)."""
    if "/" in key:
        return key
    if key in _FIXED:
        return _FIXED[key]
    for prefix, group in _PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return group + key[len(prefix) :]
    return f"metrics/{key}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class TensorBoardLog:
    """Writes each numeric metric as a scalar at step = round.

    On resume from a checkpoint of round ``r`` pass ``purge_step=r + 1``: TensorBoard then
    hides events of step >= r + 1 left by the interrupted run, so curves do not double back.
    ``SummaryWriter`` is imported here, not at package import, because it pulls in TensorBoard.
    """

    def __init__(self, logdir: str | os.PathLike[str], purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = os.fspath(logdir)
        self._writer = SummaryWriter(log_dir=self.logdir, purge_step=purge_step)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> list[str]:
        """Write the numeric metrics at ``step`` (default ``metrics["round"]``); returns tags."""
        if step is None:
            if not _is_number(metrics.get("round")):
                raise ValueError("metrics have no numeric 'round'; pass step= explicitly")
            step = int(metrics["round"])
        tags = []
        for key, value in metrics.items():
            if key == "round" or not _is_number(value):
                continue
            tag = scalar_tag(key)
            self._writer.add_scalar(tag, float(value), global_step=step)
            tags.append(tag)
        return tags

    def flush(self) -> None:
        """Push pending events to disk (the writer also does so every few seconds)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
