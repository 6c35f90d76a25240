"""The simulation engines (where a round's clients train) and the attacks that wrap them.

Pass one as ``Federation(task, strategy, backend=...)``. The implementations live under
:mod:`fedloom.simulation`; this is the namespace a user imports them from. The network
runtime, the other place clients train, is :mod:`fedloom.runtime`.
"""

from .simulation import (
    AttackedClients,
    DistributedClients,
    HierarchicalClients,
    InProcessClients,
    LabelFlip,
    ProcessPoolClients,
    ScaledNoise,
    SignFlip,
    UpdateAttack,
    VectorizedClients,
)

__all__ = [
    "AttackedClients",
    "DistributedClients",
    "HierarchicalClients",
    "InProcessClients",
    "LabelFlip",
    "ProcessPoolClients",
    "ScaledNoise",
    "SignFlip",
    "UpdateAttack",
    "VectorizedClients",
]
