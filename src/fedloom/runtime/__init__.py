"""The network runtime: an aggregator and data holders in separate processes, over gRPC."""

from .client import RefusedError, RuntimeClient
from .security import TLSConfig
from .server import AggregatorServer, QuorumError

__all__ = ["AggregatorServer", "QuorumError", "RefusedError", "RuntimeClient", "TLSConfig"]
