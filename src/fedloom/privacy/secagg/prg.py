"""Cryptographic pseudo-randomness: labelled key derivation and AES-CTR mask expansion.

A mask for a d-parameter vector is one AES-256-CTR keystream of ``4 d`` bytes (a fresh key
per pair and round, so the all-zero nonce is never reused under one key), read as
little-endian uint32 with no copy: one call per pair, AES-NI speed, no Python loop.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

KEY_BYTES = 32
_ZERO_NONCE = bytes(16)


def derive(key: bytes, label: str) -> bytes:
    """A 32-byte key for ``label`` from ``key`` (HMAC-SHA256 as a PRF)."""
    return hmac.new(key, label.encode(), hashlib.sha256).digest()


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under ``key`` (32 bytes)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a PRG key is {KEY_BYTES} bytes, got {len(key)}")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


def mask(key: bytes, length: int) -> NDArray[np.uint32]:
    """``length`` uniform uint32 values expanded from ``key``."""
    return np.frombuffer(keystream(key, 4 * length), dtype="<u4").astype(np.uint32, copy=False)


def seed_int(key: bytes) -> int:
    """An integer seed for numpy's generator (stochastic rounding), from a derived key."""
    return int.from_bytes(key, "big")
