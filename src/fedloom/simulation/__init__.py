"""Simulation engines: in this process, vectorised, in worker processes, across torchrun ranks;
the hierarchical simulation (clients -> edge aggregators -> root) over a topology."""

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
from .hierarchy import ROUND_STRIDE, HierarchicalClients
from .pool import ProcessPoolClients
from .states import ClientStates
from .vectorized import VectorizedClients

__all__ = [
    "ATTACKS",
    "ROUND_STRIDE",
    "AttackedClients",
    "ClientStates",
    "DistributedClients",
    "HierarchicalClients",
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
