"""The aggregator's side of a SecAgg+ round: collects, checks and forwards; unmasks the sum.

``receive`` takes any client message and either keeps it or raises :class:`SecAggRefused`
(counted in ``refused`` by kind; the round goes on). Closing a stage (``broadcast_keys``,
``forward_shares``, ``request_unmask``, ``unmask``) fixes who took part in it and returns the
next messages; clients that sent nothing are dropouts. If fewer than the threshold are left
the round aborts with :class:`SecAggAbort`. The server sees only public keys, ciphertexts,
masked vectors and the shares it needs; never a single client's input. Every secret it
rebuilds is checked against what its owner advertised (a self-mask seed against its SHA-256
commitment, a mask key against its public key), so an altered share is caught even when
exactly the threshold of shares arrived.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Container, Sized
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from numpy.typing import NDArray

from . import crypto, prg, shamir
from .config import SecAggConfig
from .errors import SecAggAbort, SecAggRefused
from .graph import neighbours
from .messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    is_id_tuple,
    refuse_unless,
    well_formed_share,
)
from .quantize import dequantize

log = logging.getLogger("fedloom")

_EXPECTED: dict[str, type] = {
    "advertise": AdvertiseKeys,
    "share_keys": ShareKeys,
    "masked_input": MaskedInput,
    "unmask": UnmaskShares,
}


@dataclass(frozen=True)
class AggregateResult:
    """The round's output: the survivors (whose masked inputs arrived) and their sum."""

    round: int
    survivors: tuple[int, ...]
    quantized_sum: NDArray[np.uint32]  # the exact sum of their quantised inputs mod modulus
    total: NDArray[np.float64]  # dequantised: the sum of their clipped inputs, to m steps


class SecAggServer:
    """The aggregator of one round."""

    def __init__(self, config: SecAggConfig):
        self.config = config
        self.refused: Counter[str] = Counter()
        self.stage = "advertise"
        self._graph = neighbours(config.num_clients, config.num_shares, config.graph_seed)
        self._keys: dict[int, AdvertiseKeys] = {}  # U1
        self._shares: dict[int, ShareKeys] = {}  # U2
        self._inputs: dict[int, tuple[int, ...]] = {}  # U3: whom each one masked with
        self._sum = np.zeros(config.vector_length, dtype=np.uint32)  # their vectors, summed
        self._unmask: dict[int, UnmaskShares] = {}  # U4

    # -- receiving -------------------------------------------------------------------------
    def receive(self, message: ClientMessage) -> None:
        """Keep ``message`` for the current stage, or refuse it (raises, counted)."""
        try:
            self._receive(message)
        except SecAggRefused as e:
            self.refused[e.kind] += 1
            raise

    def _receive(self, message: object) -> None:
        refuse_unless(
            isinstance(message, tuple(_EXPECTED.values())), "malformed", type(message).__name__
        )
        expected = _EXPECTED.get(self.stage)
        refuse_unless(
            type(message) is expected,
            "out_of_order", f"{type(message).__name__} during {self.stage}",
        )
        round = getattr(message, "round", None)
        refuse_unless(round == self.config.round, "stale_round", f"round {round}")
        sender = getattr(message, "sender", None)
        allowed = {
            "advertise": range(self.config.num_clients),
            "share_keys": self._keys,
            "masked_input": self._shares,
            "unmask": self._inputs,
        }[self.stage]
        refuse_unless(type(sender) is int, "malformed", "sender id is not an int")
        assert isinstance(sender, int)
        refuse_unless(sender in allowed, "unknown_sender", f"{sender} during {self.stage}")
        store: dict[str, Container[int]] = {
            "advertise": self._keys, "share_keys": self._shares,
            "masked_input": self._inputs, "unmask": self._unmask,
        }  # fmt: skip
        refuse_unless(sender not in store[self.stage], "duplicate", f"second message from {sender}")
        if isinstance(message, AdvertiseKeys):
            self._check_keys(message)
            self._keys[sender] = message
        elif isinstance(message, ShareKeys):
            self._check_shares(message)
            self._shares[sender] = message
        elif isinstance(message, MaskedInput):
            self._check_input(message)
            np.add(self._sum, message.vector, out=self._sum)  # summed now: no copy kept
            self._inputs[sender] = message.masked_with
        elif isinstance(message, UnmaskShares):
            self._check_unmask(message)
            self._unmask[sender] = message

    def _check_keys(self, m: AdvertiseKeys) -> None:
        refuse_unless(
            crypto.valid_public_key(m.cipher_public_key)
            and crypto.valid_public_key(m.mask_public_key),
            "malformed", f"public keys of {m.sender}: not 32-byte X25519 keys of full order",
        )
        refuse_unless(
            type(m.seed_commitment) is bytes and len(m.seed_commitment) == crypto.COMMITMENT_BYTES,
            "malformed", f"seed commitment of {m.sender}: not {crypto.COMMITMENT_BYTES} bytes",
        )

    def _check_shares(self, m: ShareKeys) -> None:
        refuse_unless(type(m.shares) is tuple, "malformed", "shares is not a tuple")
        n = self.config.num_clients
        for s in m.shares:
            refuse_unless(well_formed_share(s, n), "malformed", f"a share from {m.sender}")
            refuse_unless(s.round == self.config.round, "stale_round", f"share round {s.round}")
            refuse_unless(s.sender == m.sender, "malformed", "share sender differs")
        receivers = [s.receiver for s in m.shares]
        expected = self._graph[m.sender] & self._keys.keys()
        refuse_unless(
            len(receivers) == len(set(receivers)) and set(receivers) == expected,
            "malformed", f"{m.sender} must share with exactly {sorted(expected)}",
        )

    def _check_input(self, m: MaskedInput) -> None:
        v = m.vector
        refuse_unless(
            isinstance(v, np.ndarray) and v.dtype == np.uint32
            and v.shape == (self.config.vector_length,),
            "malformed", f"vector of {m.sender} is not uint32[{self.config.vector_length}]",
        )
        if self.config.modulus < 2**32:
            refuse_unless(bool((v < self.config.modulus).all()), "malformed", "value >= modulus")
        refuse_unless(
            is_id_tuple(m.masked_with, self.config.num_clients), "malformed", "masked_with ids"
        )
        expected = tuple(sorted(self._graph[m.sender] & self._shares.keys()))
        refuse_unless(
            m.masked_with == expected,
            "inconsistent", f"{m.sender} masked with {m.masked_with}, expected {expected}",
        )

    def _check_unmask(self, m: UnmaskShares) -> None:
        dropped = self._shares.keys() - self._inputs.keys()
        for pairs, owners, what in (
            (m.seed_shares, self._inputs.keys(), "seed"),
            (m.key_shares, dropped, "key"),
        ):
            refuse_unless(type(pairs) is tuple, "malformed", f"{what} shares")
            seen = set()
            for pair in pairs:
                refuse_unless(type(pair) is tuple and len(pair) == 2, "malformed", "a pair")
                owner, share = pair
                refuse_unless(
                    type(owner) is int and owner in owners, "malformed", f"{what} share of {owner}"
                )
                refuse_unless(
                    m.sender == owner or m.sender in self._graph[owner],
                    "malformed", f"{m.sender} holds no share of {owner}",
                )
                refuse_unless(owner not in seen, "duplicate", f"{what} share of {owner} twice")
                seen.add(owner)
                refuse_unless(type(share) is bytes, "malformed", "share is not bytes")
                try:
                    shamir.share_value(share)
                except ValueError as e:
                    raise SecAggRefused("malformed", f"{what} share of {owner}: {e}") from None

    # -- closing stages --------------------------------------------------------------------
    def broadcast_keys(self) -> dict[int, NeighbourKeys]:
        """Close stage 1: each advertiser gets its advertising neighbours' keys."""
        self._close("advertise", self._keys, "share_keys")
        r = self.config.round
        return {
            i: NeighbourKeys(r, i, tuple(
                PublicKeys(j, self._keys[j].cipher_public_key, self._keys[j].mask_public_key)
                for j in sorted(self._graph[i] & self._keys.keys())
            ))
            for i in sorted(self._keys)
        }  # fmt: skip

    def forward_shares(self) -> dict[int, ForwardedShares]:
        """Close stage 2: each sharer gets the shares its sharing neighbours made for it."""
        self._close("share_keys", self._shares, "masked_input")
        inbox: dict[int, list[EncryptedShare]] = {i: [] for i in self._shares}
        for sender in sorted(self._shares):
            for s in self._shares[sender].shares:
                if s.receiver in inbox:
                    inbox[s.receiver].append(s)
        return {
            i: ForwardedShares(self.config.round, i, tuple(inbox[i]))
            for i in sorted(inbox)
        }

    def request_unmask(self) -> dict[int, UnmaskRequest]:
        """Close stage 3: the survivors are fixed; ask them for the shares to unmask."""
        self._close("masked_input", self._inputs, "unmask")
        survivors = tuple(sorted(self._inputs))
        dropped = tuple(sorted(self._shares.keys() - self._inputs.keys()))
        return {i: UnmaskRequest(self.config.round, i, survivors, dropped) for i in survivors}

    def unmask(self) -> AggregateResult:
        """Close stage 4: reconstruct the secrets, remove every mask, return the sum."""
        self._close("unmask", self._unmask, "unmask")
        cfg = self.config
        total = self._sum
        seeds: dict[int, dict[int, bytes]] = {}  # owner -> {x: share}, one pass over them
        keys: dict[int, dict[int, bytes]] = {}
        for sender, m in self._unmask.items():
            for found, pairs in ((seeds, m.seed_shares), (keys, m.key_shares)):
                for owner, share in pairs:
                    found.setdefault(owner, {})[sender + 1] = share
        for i in sorted(self._inputs):
            seed = self._reconstruct(i, "seed", seeds, self._seed_check(i))
            prg.add_mask(total, seed, subtract=True)
        for j in sorted(self._shares.keys() - self._inputs.keys()):
            key = crypto.private_key(self._reconstruct(j, "key", keys, self._key_check(j)))
            for i in sorted(self._graph[j] & self._inputs.keys()):
                shared = crypto.shared_secret(key, self._keys[i].mask_public_key)
                pair = crypto.mask_key(shared, cfg.round, j, i)
                # client i added the mask if i < j, subtracted it otherwise: undo that
                prg.add_mask(total, pair, subtract=i < j)
        np.bitwise_and(total, np.uint32(cfg.modulus - 1), out=total)
        survivors = tuple(sorted(self._inputs))
        self.stage = "done"
        return AggregateResult(cfg.round, survivors, total, dequantize(total, len(survivors), cfg))

    def _seed_check(self, owner: int) -> Callable[[bytes], bool]:
        commitment, r = self._keys[owner].seed_commitment, self.config.round
        return lambda seed: crypto.commit_seed(seed, r, owner) == commitment

    def _key_check(self, owner: int) -> Callable[[bytes], bool]:
        public = self._keys[owner].mask_public_key
        return lambda key: crypto.public_bytes(crypto.private_key(key)) == public

    def _reconstruct(
        self,
        owner: int,
        what: str,
        sources: dict[int, dict[int, bytes]],
        valid: Callable[[bytes], bool],
    ) -> bytes:
        """``owner``'s secret from the shares that arrived (``sources``: owner -> {x: share}),
        checked by ``valid`` against what it advertised (the seed's commitment, the key's
        public key). The first t shares are tried; if their secret fails the check (an
        altered share: counted as ``inconsistent``) and spare shares arrived, each set of t
        that leaves one share out is tried, which survives one altered share; else the round
        aborts."""
        shares = sources.get(owner, {})
        t = self.config.reconstruction_threshold
        if len(shares) < t:
            self._abort(f"{len(shares)} {what} shares of client {owner} arrived, {t} needed")
        xs = sorted(shares)
        subsets = [xs[:t]]
        if len(xs) > t:  # spare shares: leave each of the first t out in turn
            subsets += [[x for x in xs if x != out][:t] for out in xs[:t]]
        for n, subset in enumerate(subsets):
            try:
                secret: bytes | None = shamir.combine({x: shares[x] for x in subset}, t)
            except ValueError:
                secret = None
            if secret is not None and valid(secret):
                return secret
            if n == 0:
                self.refused["inconsistent"] += 1
                log.warning("secagg round %d: %s shares of client %d are inconsistent with "
                            "what it advertised", self.config.round, what, owner)  # fmt: skip
        self._abort(
            f"{what} shares of client {owner}: inconsistent with what it advertised "
            f"({len(shares)} shares, threshold {t}: no set of {t} tried rebuilds it)"
        )

    def _close(self, stage: str, got: Sized, then: str) -> None:
        if self.stage != stage:
            raise RuntimeError(f"cannot close {stage} while at {self.stage}")
        t = self.config.reconstruction_threshold
        count = len(got)
        if count < t:
            self._abort(f"{count} clients answered, threshold {t}")
        self.stage = then

    def _abort(self, reason: str) -> NoReturn:
        stage, self.stage = self.stage, "aborted"
        raise SecAggAbort(self.config.round, stage, reason)
