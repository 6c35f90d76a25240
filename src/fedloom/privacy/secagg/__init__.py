"""Secure aggregation, SecAgg+ (Bell et al., CCS 2020): the aggregator learns only the sum.

The protocol core as message-passing state machines (:class:`SecAggClient`,
:class:`SecAggServer`), so one code path runs in simulation (:func:`simulate_round`) and,
later, over a transport. Stages: advertise keys, share keys, masked input, unmask.

One round in one process, client 3 dropping out after sharing its keys::

    cfg = SecAggConfig(num_clients=100, vector_length=d, num_shares=21,
                       reconstruction_threshold=11, clipping_range=1.0)
    run = simulate_round(cfg, updates, seed=b"run seed", dropouts=Dropouts(
        after_share_keys=frozenset({3})))
    run.result.total        # float64[d]: the sum of the survivors' clipped updates
    run.result.survivors    # the clients whose masked input arrived
    run.server.refused      # Counter of refused messages by kind

In a federation, :class:`SecureAggregation` is the stage that runs a round of the protocol
for every training round: ``Staged(FedAvg(...), [SecureAggregation(clipping_range=0.1)])``.

Driving the parties by hand (one stage at a time, as a transport would) is the sequence in
:func:`simulate_round`: ``client.advertise()`` -> ``server.receive`` ->
``server.broadcast_keys()`` -> ``client.share_keys`` -> ... -> ``server.unmask()``.
"""

from .client import SecAggClient
from .compat import check_secagg
from .config import SecAggConfig, recommended_num_shares
from .errors import REFUSAL_KINDS, SecAggAbort, SecAggRefused
from .messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from .quantize import decode_centred
from .server import AggregateResult, SecAggServer
from .simulate import Dropouts, SimulatedRound, client_seed, simulate_round
from .sizes import message_bytes
from .stage import SecAggRoundAborted, SecureAggregation

__all__ = [
    "REFUSAL_KINDS",
    "AdvertiseKeys",
    "AggregateResult",
    "ClientMessage",
    "Dropouts",
    "EncryptedShare",
    "ForwardedShares",
    "MaskedInput",
    "NeighbourKeys",
    "PublicKeys",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggRefused",
    "SecAggRoundAborted",
    "SecAggServer",
    "SecureAggregation",
    "ServerMessage",
    "ShareKeys",
    "SimulatedRound",
    "UnmaskRequest",
    "UnmaskShares",
    "check_secagg",
    "client_seed",
    "decode_centred",
    "message_bytes",
    "recommended_num_shares",
    "simulate_round",
]
