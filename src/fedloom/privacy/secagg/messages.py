"""The messages of one SecAgg+ round, stage by stage: plain data, no behaviour.

Client to server: :class:`AdvertiseKeys`, :class:`ShareKeys`, :class:`MaskedInput`,
:class:`UnmaskShares`. Server to one client: :class:`NeighbourKeys`,
:class:`ForwardedShares`, :class:`UnmaskRequest`. Fields are ints, bytes, tuples and one
uint32 array, so a transport can carry them field by field (never pickled). Every message
names its round; the receiver checks every field (see :func:`refuse_unless`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .crypto import NONCE_BYTES, TAG_BYTES
from .errors import SecAggRefused
from .shamir import SHARE_BYTES

_IDS = struct.Struct(">II")
#: an encrypted share's plaintext: sender, receiver, share of the mask key, share of the seed
SHARE_PLAINTEXT_BYTES = _IDS.size + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1: a client's two public keys (share encryption, mask agreement) and the
    commitment to its self-mask seed (:func:`~.crypto.commit_seed`)."""

    round: int
    sender: int
    cipher_public_key: bytes
    mask_public_key: bytes
    seed_commitment: bytes


@dataclass(frozen=True)
class PublicKeys:
    """One neighbour's advertised keys, as the server forwards them."""

    client: int
    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True)
class NeighbourKeys:
    """Stage 1 reply: the keys of the receiver's neighbours that advertised."""

    round: int
    receiver: int
    keys: tuple[PublicKeys, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """A client's shares of its two secrets for one neighbour, AES-GCM encrypted for it."""

    round: int
    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2: one encrypted share per neighbour that advertised."""

    round: int
    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ForwardedShares:
    """Stage 2 reply: the shares addressed to the receiver by neighbours that shared keys."""

    round: int
    receiver: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3: the masked, quantised vector and the neighbours whose pairwise masks it holds."""

    round: int
    sender: int
    masked_with: tuple[int, ...]
    vector: NDArray[np.uint32]


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3 reply: who sent a masked input (survivors) and who shared keys but did not."""

    round: int
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4: ``(owner, share)`` pairs; seed shares of survivors, key shares of the dropped."""

    round: int
    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskShares
ServerMessage = NeighbourKeys | ForwardedShares | UnmaskRequest


def refuse_unless(condition: bool, kind: str, detail: str) -> None:
    """Raise :class:`SecAggRefused` of ``kind`` unless ``condition``."""
    if not condition:
        raise SecAggRefused(kind, detail)


def is_id(value: object, num_clients: int) -> bool:
    """A client id: an int (not a bool) in ``[0, num_clients)``."""
    return type(value) is int and 0 <= value < num_clients


def is_bytes(value: object, length: int) -> bool:
    """``bytes`` of exactly ``length``."""
    return type(value) is bytes and len(value) == length


def is_id_tuple(value: object, num_clients: int) -> bool:
    """A tuple of distinct client ids."""
    return (
        type(value) is tuple
        and all(is_id(v, num_clients) for v in value)
        and len(set(value)) == len(value)
    )


def well_formed_share(share: object, num_clients: int) -> bool:
    """An :class:`EncryptedShare` whose fields have the right types and sizes."""
    return (
        isinstance(share, EncryptedShare)
        and type(share.round) is int
        and is_id(share.sender, num_clients)
        and is_id(share.receiver, num_clients)
        and is_bytes(share.nonce, NONCE_BYTES)
        and is_bytes(share.ciphertext, SHARE_CIPHERTEXT_BYTES)
    )


def pack_share_plaintext(sender: int, receiver: int, key_share: bytes, seed_share: bytes) -> bytes:
    """The plaintext of one encrypted share."""
    return _IDS.pack(sender, receiver) + key_share + seed_share


def unpack_share_plaintext(plaintext: bytes) -> tuple[int, int, bytes, bytes]:
    """``(sender, receiver, key share, seed share)`` of a decrypted share."""
    refuse_unless(len(plaintext) == SHARE_PLAINTEXT_BYTES, "malformed", "share plaintext size")
    sender, receiver = _IDS.unpack_from(plaintext)
    rest = plaintext[_IDS.size :]
    return sender, receiver, rest[:SHARE_BYTES], rest[SHARE_BYTES:]
