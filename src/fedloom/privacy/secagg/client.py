"""One client's side of a SecAgg+ round: a state machine driven by the server's messages.

Each method takes the server's message of the previous stage and returns this stage's
message. A message that fails a check raises :class:`SecAggRefused` (and is counted in
``refused``); the client then stays in its stage. One bad share inside a good message is
dropped and counted alone: the client leaves that neighbour out of its masks and says so
(``masked_with``), and the server treats the mismatch as this client dropping out.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from numpy.typing import NDArray

from . import crypto, prg, shamir
from .config import SecAggConfig
from .errors import SecAggAbort, SecAggRefused
from .graph import neighbours
from .messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    is_id,
    is_id_tuple,
    pack_share_plaintext,
    refuse_unless,
    unpack_share_plaintext,
    well_formed_share,
)
from .quantize import quantize

STAGES = ("advertise", "share_keys", "masked_input", "unmask", "done")


class SecAggClient:
    """Client ``client_id`` of one round; ``seed`` (32 bytes) makes it deterministic.

    Without a seed every secret comes from ``os.urandom``. A seed must never be used for two
    rounds (derive one per round and client, as :func:`~.simulate.client_seed` does).
    """

    def __init__(self, config: SecAggConfig, client_id: int, seed: bytes | None = None):
        if not 0 <= client_id < config.num_clients:
            raise ValueError(f"client_id {client_id} not in [0, {config.num_clients})")
        self.config = config
        self.id = client_id
        self.refused: Counter[str] = Counter()
        self.stage = STAGES[0]
        self._seed = os.urandom(32) if seed is None else seed
        self._cipher_key = crypto.private_key(prg.derive(self._seed, "cipher key"))
        self._mask_secret = prg.derive(self._seed, "mask key")  # shared among the neighbours
        self._mask_key = crypto.private_key(self._mask_secret)
        self._self_mask_seed = prg.derive(self._seed, "self mask")
        self._graph = neighbours(config.num_clients, config.num_shares, config.graph_seed)[
            client_id
        ]
        self._peers: dict[int, PublicKeys] = {}  # neighbours that advertised
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (key share, seed share)
        self._channel: dict[int, bytes] = {}  # neighbour -> shared secret of the cipher keys

    # -- stage 1 ---------------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        """This client's two public keys and its self-mask seed's commitment."""
        self._enter("advertise")
        self.stage = "share_keys"
        return AdvertiseKeys(
            round=self.config.round,
            sender=self.id,
            cipher_public_key=crypto.public_bytes(self._cipher_key),
            mask_public_key=crypto.public_bytes(self._mask_key),
            seed_commitment=crypto.commit_seed(self._self_mask_seed, self.config.round, self.id),
        )

    # -- stage 2 ---------------------------------------------------------------------------
    def share_keys(self, message: NeighbourKeys) -> ShareKeys:
        """Shamir-share the mask key and the self-mask seed among the neighbours that advertised."""
        self._enter("share_keys")
        self._guard(message, NeighbourKeys)
        keys = message.keys
        self._check(type(keys) is tuple, "malformed", "keys is not a tuple")
        peers: dict[int, PublicKeys] = {}
        for k in keys:
            self._check(isinstance(k, PublicKeys), "malformed", "not a PublicKeys")
            self._check(is_id(k.client, self.config.num_clients), "malformed", "client id")
            self._check(k.client in self._graph, "unknown_sender", f"{k.client} not a neighbour")
            self._check(k.client not in peers, "duplicate", f"keys of {k.client} twice")
            self._check(
                crypto.valid_public_key(k.cipher_public_key)
                and crypto.valid_public_key(k.mask_public_key),
                "malformed", f"public keys of {k.client}",
            )
            peers[k.client] = k
        holders = sorted([self.id, *peers])
        t = self.config.reconstruction_threshold
        if len(holders) < t:
            raise SecAggAbort(
                self.config.round, "share_keys",
                f"client {self.id} has {len(holders) - 1} neighbours left, {t - 1} needed",
            )
        xs = [h + 1 for h in holders]
        need = shamir.randomness_needed(t)
        key_shares = shamir.split(
            self._mask_secret, xs, t, prg.keystream(prg.derive(self._seed, "shamir key"), need)
        )
        seed_shares = shamir.split(
            self._self_mask_seed, xs, t, prg.keystream(prg.derive(self._seed, "shamir seed"), need)
        )
        self._peers = peers
        self._held = {self.id: (key_shares[self.id + 1], seed_shares[self.id + 1])}
        shares = []
        for j in sorted(peers):
            nonce = prg.derive(self._seed, f"nonce {j}")[: crypto.NONCE_BYTES]
            plaintext = pack_share_plaintext(self.id, j, key_shares[j + 1], seed_shares[j + 1])
            channel = crypto.shared_secret(self._cipher_key, peers[j].cipher_public_key)
            self._channel[j] = channel
            ciphertext = crypto.encrypt_share(
                channel, self.config.round, self.id, j, nonce, plaintext
            )
            shares.append(EncryptedShare(self.config.round, self.id, j, nonce, ciphertext))
        self.stage = "masked_input"
        return ShareKeys(self.config.round, self.id, tuple(shares))

    # -- stage 3 ---------------------------------------------------------------------------
    def masked_input(
        self,
        message: ForwardedShares,
        update: NDArray[np.floating],
        noise: NDArray[np.integer] | None = None,
    ) -> MaskedInput:
        """Keep the neighbours' shares; send ``update`` quantised and masked.

        ``noise`` (integers, distributed DP's share of the noise) is added to the quantised
        vector, modulo the modulus, before any mask: no party ever sees it un-noised."""
        self._enter("masked_input")
        self._guard(message, ForwardedShares)
        d = self.config.vector_length
        if update.shape != (d,) or not np.issubdtype(update.dtype, np.floating):
            raise ValueError(f"update must be a float vector of length {d}, got {update.shape}")
        if not np.isfinite(update).all():
            raise ValueError("update holds NaN or infinity")
        self._check(type(message.shares) is tuple, "malformed", "shares is not a tuple")
        for share in message.shares:
            self._accept_share(share)  # counts and skips a bad one
        t = self.config.reconstruction_threshold
        if len(self._held) < t:
            raise SecAggAbort(
                self.config.round, "masked_input",
                f"client {self.id} holds shares of {len(self._held)} clients, {t} needed",
            )
        vector = self.quantize(update)
        if noise is not None:
            if noise.shape != (d,) or not np.issubdtype(noise.dtype, np.integer):
                raise ValueError(f"noise must be an integer vector of length {d}")
            noisy = np.mod(vector.astype(np.int64) + noise.astype(np.int64), self.config.modulus)
            vector = noisy.astype(np.uint32)
        prg.add_mask(vector, self._self_mask_seed)
        masked_with = tuple(sorted(set(self._held) - {self.id}))
        for j in masked_with:
            shared = crypto.shared_secret(self._mask_key, self._peers[j].mask_public_key)
            key = crypto.mask_key(shared, self.config.round, self.id, j)
            # the lower id adds, the higher subtracts: the pair cancels in the sum
            prg.add_mask(vector, key, subtract=self.id > j)
        np.bitwise_and(vector, np.uint32(self.config.modulus - 1), out=vector)
        self.stage = "unmask"
        return MaskedInput(self.config.round, self.id, masked_with, vector)

    def quantize(self, update: NDArray[np.floating]) -> NDArray[np.uint32]:
        """``update`` as this client quantises it before masking (same seed, same rounding)."""
        rounding = np.random.default_rng(prg.seed_int(prg.derive(self._seed, "rounding")))
        return quantize(update, self.config, rounding)

    def _accept_share(self, share: EncryptedShare) -> None:
        try:
            refuse_unless(
                well_formed_share(share, self.config.num_clients), "malformed", "encrypted share"
            )
            refuse_unless(share.round == self.config.round, "stale_round", f"round {share.round}")
            refuse_unless(share.receiver == self.id, "misrouted", f"for {share.receiver}")
            refuse_unless(share.sender in self._peers, "unknown_sender", f"from {share.sender}")
            refuse_unless(share.sender not in self._held, "duplicate", f"from {share.sender}")
            plaintext = crypto.decrypt_share(
                self._channel[share.sender], self.config.round, share.sender, self.id,
                share.nonce, share.ciphertext,
            )
            refuse_unless(plaintext is not None, "decrypt", f"share from {share.sender}")
            assert plaintext is not None
            sender, receiver, key_share, seed_share = unpack_share_plaintext(plaintext)
            refuse_unless((sender, receiver) == (share.sender, self.id), "malformed", "ids")
            for s in (key_share, seed_share):
                try:
                    shamir.share_value(s)
                except ValueError as e:
                    raise SecAggRefused("malformed", str(e)) from None
        except SecAggRefused as e:
            self.refused[e.kind] += 1
            return
        self._held[share.sender] = (key_share, seed_share)

    # -- stage 4 ---------------------------------------------------------------------------
    def unmask(self, message: UnmaskRequest) -> UnmaskShares:
        """Seed shares of the survivors, key shares of the dropped; never both for one client."""
        self._enter("unmask")
        self._guard(message, UnmaskRequest)
        n, t = self.config.num_clients, self.config.reconstruction_threshold
        survivors, dropped = message.survivors, message.dropped
        self._check(
            is_id_tuple(survivors, n) and is_id_tuple(dropped, n), "malformed", "id lists"
        )
        self._check(not set(survivors) & set(dropped), "malformed", "a client in both lists")
        self._check(self.id in survivors, "malformed", "this client listed as dropped")
        self._check(
            len(survivors) >= t, "malformed", f"{len(survivors)} survivors, threshold {t}"
        )
        seed = tuple((j, self._held[j][1]) for j in sorted(survivors) if j in self._held)
        key = tuple((j, self._held[j][0]) for j in sorted(dropped) if j in self._held)
        self.stage = "done"
        return UnmaskShares(self.config.round, self.id, seed, key)

    # -- checks ----------------------------------------------------------------------------
    def _enter(self, stage: str) -> None:
        self._check(self.stage == stage, "out_of_order", f"{stage} while at {self.stage}")

    def _guard(self, message: object, kind: type) -> None:
        self._check(isinstance(message, kind), "malformed", f"expected {kind.__name__}")
        receiver = getattr(message, "receiver", None)
        self._check(getattr(message, "round", None) == self.config.round, "stale_round", "round")
        self._check(receiver == self.id, "misrouted", f"addressed to {receiver}")

    def _check(self, condition: bool, kind: str, detail: str) -> None:
        if not condition:
            self.refused[kind] += 1
            raise SecAggRefused(kind, f"client {self.id}: {detail}")
