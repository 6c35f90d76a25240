"""Bytes a SecAgg+ message takes on the wire, counted field by field.

A transport carries each message as its fields (never pickled): ints as 8 bytes, bytes and
arrays as their length, tuples with a 4-byte count. Close to any real encoding, and the
same in simulation and over the network, so a round's cost per client can be reported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

INT_BYTES = 8
COUNT_BYTES = 4


def message_bytes(message: object) -> int:
    """The payload size of ``message`` (a message dataclass or one of its fields)."""
    if isinstance(message, bool | int):
        return INT_BYTES
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, np.ndarray):
        return int(message.nbytes)
    if isinstance(message, tuple):
        return COUNT_BYTES + sum(message_bytes(m) for m in message)
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return sum(message_bytes(getattr(message, f.name)) for f in dataclasses.fields(message))
    raise TypeError(f"no wire size for {type(message).__name__}")
