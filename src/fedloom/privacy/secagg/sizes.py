"""Bytes a SecAgg+ message takes on the wire, counted field by field.

A transport carries each message as its fields (never pickled): ints as 8 bytes, bytes and
arrays as their length, tuples with a 4-byte count. Close to any real encoding, and the
same in simulation and over the network, so a round's cost per client can be reported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .messages import EncryptedShare

INT_BYTES = 8
COUNT_BYTES = 4
_FIELDS: dict[type, tuple[str, ...]] = {}


def message_bytes(message: object) -> int:
    """The payload size of ``message`` (a message dataclass or one of its fields)."""
    kind = type(message)
    if kind is int or kind is bool:
        return INT_BYTES
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, np.ndarray):
        return int(message.nbytes)
    if isinstance(message, EncryptedShare):  # the bulk of a round's messages: no recursion
        return 3 * INT_BYTES + len(message.nonce) + len(message.ciphertext)
    if isinstance(message, tuple):
        if all(type(m) is int for m in message):
            return COUNT_BYTES + INT_BYTES * len(message)
        return COUNT_BYTES + sum(map(message_bytes, message))
    if kind not in _FIELDS:
        if not dataclasses.is_dataclass(kind):
            raise TypeError(f"no wire size for {kind.__name__}")
        _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return sum(message_bytes(getattr(message, n)) for n in _FIELDS[kind])
