"""The network runtime: an aggregator and data holders in separate processes, over gRPC."""

from .channel import ClientChannel, RefusedError, UnreachableError
from .client import RuntimeClient
from .ownloop import Connection, Job, JobError, connect
from .security import TLSConfig
from .server import AggregatorServer, QuorumError

__all__ = [
    "AggregatorServer",
    "ClientChannel",
    "Connection",
    "Job",
    "JobError",
    "QuorumError",
    "RefusedError",
    "RuntimeClient",
    "TLSConfig",
    "UnreachableError",
    "connect",
]
