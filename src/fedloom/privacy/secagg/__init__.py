"""Secure aggregation, SecAgg+ (Bell et al., CCS 2020): the aggregator learns only the sum.

The protocol core as message-passing state machines (:class:`SecAggClient`,
:class:`SecAggServer`), so one code path runs in simulation (:func:`simulate_round`) and,
later, over a transport. Stages: advertise keys, share keys, masked input, unmask.
"""

from .client import SecAggClient
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
from .server import AggregateResult, SecAggServer
from .simulate import Dropouts, SimulatedRound, client_seed, simulate_round

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
    "SecAggServer",
    "ServerMessage",
    "ShareKeys",
    "SimulatedRound",
    "UnmaskRequest",
    "UnmaskShares",
    "client_seed",
    "recommended_num_shares",
    "simulate_round",
]
