"""Validation of header fields from another party: every value is checked before use.

A field that is missing, of the wrong JSON type (``true`` is not ``1``, ``2.0`` is not ``2``)
or out of its range is a :class:`~fedloom.errors.WireError` naming the stage and the field.
"""

from __future__ import annotations

from typing import Any

from ..errors import WireError


def fields(header: object, keys: set[str], where: str) -> dict[str, Any]:
    """``header`` as a dict holding exactly ``keys``."""
    if not isinstance(header, dict):
        raise WireError(f"{where}: header is {type(header).__name__}, not an object")
    if set(header) != keys:
        raise WireError(f"{where}: header keys {sorted(map(str, header))}, expected {sorted(keys)}")
    return header


def integer(header: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    """An int (not a bool, not a float) with ``lo <= value <= hi``."""
    value = header[key]
    if type(value) is not int:
        raise WireError(f"{where}: {key} = {show(value)} is not an integer")
    if not lo <= value <= hi:
        raise WireError(f"{where}: {key} = {value} is outside [{lo}, {hi}]")
    return value


def equal(header: dict[str, Any], key: str, want: object, where: str) -> None:
    """A field that must repeat what the receiver's own chain says (a parameter)."""
    value = header[key]
    if type(value) is not type(want) or value != want:
        raise WireError(f"{where}: {key} = {show(value)}, this chain expects {want!r}")


def length(got: int, want: int, what: str) -> None:
    if got != want:
        kind = "truncated" if got < want else "trailing bytes in"
        raise WireError(f"{kind} {what}: {got} bytes, the header implies {want}")


def show(value: object, limit: int = 60) -> str:
    """A header value for a message: its repr, cut short (a header may hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
