"""Cryptographic pseudo-randomness: labelled key derivation and AES-CTR mask expansion.

A mask for a d-parameter vector is one AES-256-CTR keystream of ``4 d`` bytes (a fresh key
per pair and round, so the all-zero nonce is never reused under one key), read as
little-endian uint32: one call per pair, AES-NI speed, no Python loop. :func:`add_mask`
adds it to a vector in place a few hundred KiB at a time, through buffers reused by the
thread, so a mask never sits in memory whole and no fresh pages are faulted in per mask
(those page faults, not AES, were most of a mask's cost).
"""

from __future__ import annotations

import hashlib
import hmac
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

KEY_BYTES = 32
_ZERO_NONCE = bytes(16)
CHUNK_VALUES = 1 << 16  # uint32 values per keystream piece: 256 KiB, within a core's L2
_BLOCK = 16
_local = threading.local()  # per thread: the zero plaintext and the keystream buffer


def derive(key: bytes, label: str) -> bytes:
    """A 32-byte key for ``label`` from ``key`` (HMAC-SHA256 as a PRF)."""
    return hmac.new(key, label.encode(), hashlib.sha256).digest()


def _cipher(key: bytes) -> Cipher[modes.CTR]:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a PRG key is {KEY_BYTES} bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE))


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under ``key`` (32 bytes)."""
    encryptor = _cipher(key).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


def mask(key: bytes, length: int) -> NDArray[np.uint32]:
    """``length`` uniform uint32 values expanded from ``key``."""
    return np.frombuffer(keystream(key, 4 * length), dtype="<u4").astype(np.uint32, copy=False)


def add_mask(vector: NDArray[np.uint32], key: bytes, subtract: bool = False) -> None:
    """``vector += mask(key, len(vector))`` (``-=`` with ``subtract``) in place, mod 2^32.

    The same values as adding :func:`mask`, since CTR's keystream continues across pieces;
    ``vector`` must be a contiguous 1-D uint32 array."""
    if vector.dtype != np.uint32 or vector.ndim != 1 or not vector.flags.c_contiguous:
        raise ValueError("add_mask needs a contiguous 1-D uint32 vector")
    if not vector.flags.writeable:
        raise ValueError("add_mask needs a writeable vector")
    encryptor = _cipher(key).encryptor()
    zeros, buffer, piece = _scratch()
    op = np.subtract if subtract else np.add
    d = vector.shape[0]
    for start in range(0, d, CHUNK_VALUES):
        n = min(CHUNK_VALUES, d - start)
        encryptor.update_into(zeros[: 4 * n], buffer)
        part = vector[start : start + n]
        op(part, piece[:n], out=part)
    encryptor.finalize()


def _scratch() -> tuple[memoryview, bytearray, NDArray[np.uint32]]:
    """This thread's zero plaintext, keystream buffer (with room for CTR's block slack) and
    that buffer read as little-endian uint32."""
    scratch: tuple[memoryview, bytearray, NDArray[np.uint32]] | None = getattr(
        _local, "scratch", None
    )
    if scratch is None:
        buffer = bytearray(4 * CHUNK_VALUES + _BLOCK)
        values = np.frombuffer(buffer, dtype="<u4", count=CHUNK_VALUES)
        scratch = _local.scratch = (memoryview(bytes(4 * CHUNK_VALUES)), buffer, values)
    return scratch


def seed_int(key: bytes) -> int:
    """An integer seed for numpy's generator (stochastic rounding), from a derived key."""
    return int.from_bytes(key, "big")
