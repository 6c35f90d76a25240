"""SecAgg+ stage messages on the wire: the protocol's dataclasses to protobuf and back.

Each protobuf message mirrors one of :mod:`fedloom.privacy.secagg.messages` field by field
(ints, bytes, repeated). Reading one checks every field's type, size and range before a
dataclass is built (:class:`SecAggRefused` of kind ``malformed`` otherwise); the protocol's
state machines then check what the fields mean (round, sender, stage, duplicates). Nothing is
ever unpickled. The round id and sender of a message travel once, in the request's header.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from ..privacy.ddp_noise import SkellamShares
from ..privacy.secagg import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    SecAggConfig,
    SecAggRefused,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from ..privacy.secagg.crypto import COMMITMENT_BYTES, NONCE_BYTES, PUBLIC_KEY_BYTES
from ..privacy.secagg.messages import SHARE_CIPHERTEXT_BYTES
from ..privacy.secagg.shamir import SHARE_BYTES
from .proto import fedloom_pb2 as pb

#: the stage a client message belongs to, as the request's ``stage`` field names it
STAGE_OF = {AdvertiseKeys: 1, ShareKeys: 2, MaskedInput: 3, UnmaskShares: 4}
_PAYLOAD = {1: "advertise", 2: "share_keys", 3: "masked_input", 4: "unmask"}
_VECTOR = np.dtype("<u4")
#: values of a masked vector per message (8 MiB, half of gRPC's message limit): a longer
#: vector travels in parts, in order
PART_VALUES = 1 << 21


def _malformed(detail: str) -> SecAggRefused:
    return SecAggRefused("malformed", detail)


def _id(value: int, n: int, what: str) -> int:
    if not 0 <= value < n:
        raise _malformed(f"{what} {value} is not in [0, {n})")
    return int(value)


def _bytes(value: bytes, length: int, what: str) -> bytes:
    if len(value) != length:
        raise _malformed(f"{what}: {len(value)} bytes, {length} expected")
    return bytes(value)


def _count(items: Iterable[object], n: int, what: str) -> None:
    if len(list(items)) > n:
        raise _malformed(f"more than {n} {what}")


# -- parameters -------------------------------------------------------------------------------
def params_to_proto(
    config: SecAggConfig,
    index: int,
    stage_timeout: float,
    noise: SkellamShares | None = None,
) -> pb.SecAggParams:
    dp: dict[str, Any] = {}
    if noise is not None:
        dp = dict(
            distributed_dp=True,
            dp_clip_norm=noise.clip_norm,
            dp_noise_multiplier=noise.noise_multiplier,
            dp_dropout_tolerance=noise.dropout_tolerance,
        )
    return pb.SecAggParams(
        session=config.round,
        index=index,
        num_clients=config.num_clients,
        vector_length=config.vector_length,
        num_shares=config.num_shares,
        reconstruction_threshold=config.reconstruction_threshold,
        clipping_range=config.clipping_range,
        quantization_range=config.quantization_range,
        modulus=config.modulus,
        graph_seed=config.graph_seed,
        stage_timeout_s=stage_timeout,
        **dp,
    )


def params_from_proto(p: pb.SecAggParams, vector_length: int) -> tuple[SecAggConfig, int]:
    """(config, this client's index); the vector must be as long as the client's model."""
    if p.vector_length != vector_length:
        raise _malformed(f"vector length {p.vector_length}; this model has {vector_length}")
    if not (math.isfinite(p.stage_timeout_s) and 0 < p.stage_timeout_s <= 86400):
        raise _malformed(f"stage timeout {p.stage_timeout_s!r} s")
    # t shares of a secret reveal it: with 2t <= k an aggregator telling clients different
    # stories could collect both a client's seed and its key shares, and unmask its input
    if not 2 * p.reconstruction_threshold > p.num_shares or p.reconstruction_threshold < 2:
        raise _malformed(
            f"reconstruction threshold {p.reconstruction_threshold} of {p.num_shares} shares: "
            "it must be at least 2 and more than half the shares"
        )
    try:
        config = SecAggConfig(
            num_clients=p.num_clients,
            vector_length=p.vector_length,
            num_shares=p.num_shares,
            reconstruction_threshold=p.reconstruction_threshold,
            clipping_range=p.clipping_range,
            quantization_range=p.quantization_range,
            modulus=p.modulus,
            round=p.session,
            graph_seed=p.graph_seed,
        )
    except ConfigError as e:
        raise _malformed(str(e)) from None
    return config, _id(p.index, config.num_clients, "index")


def noise_from_proto(p: pb.SecAggParams, config: SecAggConfig) -> SkellamShares | None:
    """The distributed-DP noise calibration the parameters carry (None: no DP). A round that
    says distributed DP with no noise, a clip that is not a positive number, a tolerance
    outside [0, 1), or a noisy sum the modulus could wrap is refused as malformed; DP
    values in a round that does not say distributed DP are refused too (a typo or a
    downgrade)."""
    values = (p.dp_clip_norm, p.dp_noise_multiplier, p.dp_dropout_tolerance)
    if not p.distributed_dp:
        if any(v != 0 for v in values):
            raise _malformed(f"distributed DP values {values} in a round without it")
        return None
    try:
        noise = SkellamShares(p.dp_noise_multiplier, p.dp_clip_norm, p.dp_dropout_tolerance)
        noise.check_fits(config)
    except (ValueError, ConfigError) as e:
        raise _malformed(f"distributed DP: {e}") from None
    return noise


# -- client messages --------------------------------------------------------------------------
def request_payloads(message: ClientMessage) -> list[dict[str, Any]]:
    """The ``SecAggRequest`` payloads that carry ``message``, in order: one, or for a masked
    vector longer than :data:`PART_VALUES`, one per part."""
    if not isinstance(message, MaskedInput):
        return [request_payload(message)]
    vector = np.ascontiguousarray(message.vector, dtype=_VECTOR)
    step = PART_VALUES
    return [
        {
            "masked_input": pb.SecAggMasked(
                masked_with=message.masked_with,
                vector=vector[i : i + step].tobytes(),
                offset=i,
            )
        }
        for i in range(0, max(1, len(vector)), step)
    ]


def request_payload(message: ClientMessage) -> dict[str, Any]:
    """The ``SecAggRequest`` fields that carry ``message`` whole (header fields aside)."""
    if isinstance(message, AdvertiseKeys):
        keys = pb.SecAggKeys(
            client=message.sender,
            cipher_public_key=message.cipher_public_key,
            mask_public_key=message.mask_public_key,
            seed_commitment=message.seed_commitment,
        )
        return {"advertise": keys}
    if isinstance(message, ShareKeys):
        return {"share_keys": _shares_to_proto(message.shares)}
    if isinstance(message, MaskedInput):
        vector = np.ascontiguousarray(message.vector, dtype=_VECTOR).tobytes()
        return {"masked_input": pb.SecAggMasked(masked_with=message.masked_with, vector=vector)}
    return {
        "unmask": pb.SecAggUnmask(
            seed_shares=[pb.SecAggOwnedShare(owner=o, share=s) for o, s in message.seed_shares],
            key_shares=[pb.SecAggOwnedShare(owner=o, share=s) for o, s in message.key_shares],
        )
    }


def client_message(request: pb.SecAggRequest, config: SecAggConfig) -> ClientMessage:
    """The checked client message a request carries (round and sender from its header)."""
    n, r = config.num_clients, request.session
    sender = _id(request.index, n, "sender")
    which = request.WhichOneof("payload")
    if which is None or _PAYLOAD.get(request.stage) != which:
        raise _malformed(f"stage {request.stage} with payload {which}")
    if which == "advertise":
        k = request.advertise
        if k.client != sender:
            raise _malformed(f"keys of {k.client} sent by {sender}")
        return AdvertiseKeys(
            r,
            sender,
            _bytes(k.cipher_public_key, PUBLIC_KEY_BYTES, "cipher key"),
            _bytes(k.mask_public_key, PUBLIC_KEY_BYTES, "mask key"),
            _bytes(k.seed_commitment, COMMITMENT_BYTES, "seed commitment"),
        )
    if which == "share_keys":
        return ShareKeys(r, sender, _shares_from_proto(request.share_keys, r, n))
    if which == "masked_input":
        raise _malformed("a masked input goes to MaskedParts, which assembles its parts")
    u = request.unmask
    return UnmaskShares(r, sender, _owned(u.seed_shares, n), _owned(u.key_shares, n))


class MaskedParts:
    """Masked inputs arriving in parts: each sender's parts in order into one buffer; the
    part that fills it gives the :class:`MaskedInput`. The caller admits a sender (its stage,
    its place in the round) before its first part allocates a buffer."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[tuple[int, ...], NDArray[np.uint32], int]] = {}

    def add(self, request: pb.SecAggRequest, config: SecAggConfig) -> MaskedInput | None:
        """The complete input, or None while parts are still to come."""
        n, d = config.num_clients, config.vector_length
        sender = _id(request.index, n, "sender")
        if request.stage != 3 or request.WhichOneof("payload") != "masked_input":
            raise _malformed(f"stage {request.stage} with a masked input")
        m = request.masked_input
        _count(m.masked_with, n, "mask partners")
        masked_with = tuple(_id(j, n, "mask partner") for j in m.masked_with)
        raw = m.vector
        count, rest = divmod(len(raw), _VECTOR.itemsize)
        if rest or not count:
            raise _malformed(f"a part of {len(raw)} bytes is not a whole number of values")
        first, buffer, filled = self._open.get(sender, (masked_with, None, 0))
        if m.offset != filled:
            raise SecAggRefused("out_of_order", f"part at {m.offset}, expected {filled}")
        if masked_with != first:
            raise _malformed("the parts of one input name different mask partners")
        if filled + count > d:
            raise _malformed(f"{filled + count} values; the vector has {d}")
        if buffer is None:
            buffer = np.empty(d, dtype=np.uint32)
        buffer[filled : filled + count] = np.frombuffer(raw, dtype=_VECTOR)
        filled += count
        if filled < d:
            self._open[sender] = (masked_with, buffer, filled)
            return None
        self._open.pop(sender, None)
        return MaskedInput(config.round, sender, masked_with, buffer)


def _shares_to_proto(shares: Iterable[EncryptedShare]) -> pb.SecAggShares:
    return pb.SecAggShares(
        shares=[
            pb.SecAggShare(
                sender=s.sender, receiver=s.receiver, nonce=s.nonce, ciphertext=s.ciphertext
            )
            for s in shares
        ]
    )


def _shares_from_proto(p: pb.SecAggShares, r: int, n: int) -> tuple[EncryptedShare, ...]:
    _count(p.shares, n, "shares")
    return tuple(
        EncryptedShare(
            r,
            _id(s.sender, n, "share sender"),
            _id(s.receiver, n, "share receiver"),
            _bytes(s.nonce, NONCE_BYTES, "nonce"),
            _bytes(s.ciphertext, SHARE_CIPHERTEXT_BYTES, "ciphertext"),
        )
        for s in p.shares
    )


def _owned(pairs: Iterable[pb.SecAggOwnedShare], n: int) -> tuple[tuple[int, bytes], ...]:
    listed = list(pairs)
    _count(listed, n, "shares")
    return tuple((_id(p.owner, n, "owner"), _bytes(p.share, SHARE_BYTES, "share")) for p in listed)


# -- server messages --------------------------------------------------------------------------
def reply_for(message: ServerMessage) -> pb.SecAggReply:
    """The ``NEXT`` reply carrying ``message`` to its receiver."""
    if isinstance(message, NeighbourKeys):
        keys = [
            pb.SecAggKeys(
                client=k.client,
                cipher_public_key=k.cipher_public_key,
                mask_public_key=k.mask_public_key,
            )
            for k in message.keys
        ]
        return pb.SecAggReply(
            kind=pb.SecAggReply.NEXT, neighbour_keys=pb.SecAggNeighbours(keys=keys)
        )
    if isinstance(message, ForwardedShares):
        shares = _shares_to_proto(message.shares)
        return pb.SecAggReply(kind=pb.SecAggReply.NEXT, forwarded_shares=shares)
    ids = pb.SecAggIds(survivors=message.survivors, dropped=message.dropped)
    return pb.SecAggReply(kind=pb.SecAggReply.NEXT, unmask_request=ids)


def server_message(
    reply: pb.SecAggReply, stage: int, config: SecAggConfig, receiver: int
) -> ServerMessage:
    """The checked server message of a ``NEXT`` reply to this client's stage-``stage`` message."""
    n, r = config.num_clients, config.round
    expected = {1: "neighbour_keys", 2: "forwarded_shares", 3: "unmask_request"}.get(stage)
    which = reply.WhichOneof("payload")
    if which is None or which != expected:
        raise _malformed(f"reply {which} to a stage-{stage} message")
    if which == "neighbour_keys":
        listed = list(reply.neighbour_keys.keys)
        _count(listed, n, "neighbour keys")
        return NeighbourKeys(
            r,
            receiver,
            tuple(
                PublicKeys(
                    _id(k.client, n, "neighbour"),
                    _bytes(k.cipher_public_key, PUBLIC_KEY_BYTES, "cipher key"),
                    _bytes(k.mask_public_key, PUBLIC_KEY_BYTES, "mask key"),
                )
                for k in listed
            ),
        )
    if which == "forwarded_shares":
        return ForwardedShares(r, receiver, _shares_from_proto(reply.forwarded_shares, r, n))
    ids = reply.unmask_request
    _count(ids.survivors, n, "survivors")
    _count(ids.dropped, n, "dropped clients")
    return UnmaskRequest(
        r,
        receiver,
        tuple(_id(i, n, "survivor") for i in ids.survivors),
        tuple(_id(i, n, "dropped client") for i in ids.dropped),
    )
