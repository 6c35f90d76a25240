"""Key agreement and share encryption between two SecAgg clients (X25519, HKDF, AES-GCM).

Every derived key and every ciphertext is bound to the round and to both ids, so a share
replayed from another round, or handed to another client, fails authentication.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
COMMITMENT_BYTES = 32
TAG_BYTES = 16
_DOMAIN = b"fedloom-secagg/v1"


def private_key(raw: bytes) -> X25519PrivateKey:
    """The X25519 key of 32 raw bytes (any 32 bytes are a valid key)."""
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``private``."""
    return private.public_key().public_bytes_raw()


_PROBE = X25519PrivateKey.from_private_bytes(b"fedloom-secagg public key probe!")


def valid_public_key(raw: object) -> bool:
    """32 bytes that make a usable X25519 key: a low-order point (all zeros, say) gives an
    all-zero shared secret, which OpenSSL refuses, so another client could not use it."""
    if type(raw) is not bytes or len(raw) != PUBLIC_KEY_BYTES:
        return False
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return False
    return True


def shared_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer: the same from both ends, computed once per pair."""
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def _derive(shared: bytes, purpose: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_DOMAIN + purpose + info).derive(shared)


def mask_key(shared: bytes, round: int, a: int, b: int) -> bytes:
    """The pairwise mask seed of clients ``a`` and ``b`` (symmetric in them) for ``round``."""
    lo, hi = min(a, b), max(a, b)
    return _derive(shared, b" mask", struct.pack(">QII", round, lo, hi))


def associated_data(round: int, sender: int, receiver: int) -> bytes:
    """What a share's ciphertext is bound to: protocol, round, sender, receiver."""
    return _DOMAIN + b" share" + struct.pack(">QII", round, sender, receiver)


def _share_key(shared: bytes, round: int, sender: int, receiver: int) -> bytes:
    # directional: the key from a to b differs from the key from b to a
    return _derive(shared, b" share-key", struct.pack(">QII", round, sender, receiver))


def encrypt_share(
    shared: bytes, round: int, sender: int, receiver: int, nonce: bytes, plaintext: bytes
) -> bytes:
    """AES-GCM ciphertext (with tag) of ``plaintext`` from ``sender`` to ``receiver``."""
    key = _share_key(shared, round, sender, receiver)
    return AESGCM(key).encrypt(nonce, plaintext, associated_data(round, sender, receiver))


def decrypt_share(
    shared: bytes, round: int, sender: int, receiver: int, nonce: bytes, ciphertext: bytes
) -> bytes | None:
    """The plaintext, or None when the ciphertext is not authentic for these ids and round."""
    key = _share_key(shared, round, sender, receiver)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data(round, sender, receiver))
    except InvalidTag:
        return None


def commit_seed(seed: bytes, round: int, client: int) -> bytes:
    """SHA-256 over a domain-separated encoding of a client's self-mask seed, its round and
    its id: advertised with the keys, so the server can check the seed that shares rebuild.
    An altered share rebuilds another seed, which is otherwise undetectable with exactly t
    shares (the mask key has its public key for this). The seed is 32 random bytes, so the
    hash hides it."""
    header = _DOMAIN + b"/self-mask seed commitment" + struct.pack(">QQI", round, client, len(seed))
    return hashlib.sha256(header + seed).digest()
