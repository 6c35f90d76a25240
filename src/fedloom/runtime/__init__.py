"""The network runtime: an aggregator and data holders in separate processes, over gRPC."""

from .channel import ClientChannel, RefusedError, UnreachableError
from .client import RuntimeClient
from .ownloop import Connection, Job, JobError, connect
from .secagg_round import SecAggSettings
from .security import TLSConfig
from .server import AggregatorServer, QuorumError
from .trainer import ClientTrainer

__all__ = [
    "AggregatorServer",
    "ClientChannel",
    "ClientTrainer",
    "Connection",
    "Job",
    "JobError",
    "QuorumError",
    "RefusedError",
    "RuntimeClient",
    "SecAggSettings",
    "TLSConfig",
    "UnreachableError",
    "connect",
]
