"""Simulation engines: clients trained in this process (more engines come with scale-out)."""

from .attacks import (
    ATTACKS,
    AttackedClients,
    LabelFlip,
    ScaledNoise,
    SignFlip,
    UpdateAttack,
    choose_attackers,
)
from .engine import InProcessClients
from .pool import ProcessPoolClients
from .vectorized import VectorizedClients

__all__ = [
    "ATTACKS",
    "AttackedClients",
    "InProcessClients",
    "LabelFlip",
    "ProcessPoolClients",
    "ScaledNoise",
    "SignFlip",
    "UpdateAttack",
    "VectorizedClients",
    "choose_attackers",
]
