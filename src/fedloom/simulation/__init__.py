"""Simulation engines: in this process, vectorised, in worker processes, across torchrun ranks."""

from .attacks import (
    ATTACKS,
    AttackedClients,
    LabelFlip,
    ScaledNoise,
    SignFlip,
    UpdateAttack,
    choose_attackers,
)
from .distributed import DistributedClients, in_distributed_env
from .engine import InProcessClients
from .pool import ProcessPoolClients
from .states import ClientStates
from .vectorized import VectorizedClients

__all__ = [
    "ATTACKS",
    "AttackedClients",
    "ClientStates",
    "DistributedClients",
    "InProcessClients",
    "LabelFlip",
    "ProcessPoolClients",
    "ScaledNoise",
    "SignFlip",
    "UpdateAttack",
    "VectorizedClients",
    "choose_attackers",
    "in_distributed_env",
]
