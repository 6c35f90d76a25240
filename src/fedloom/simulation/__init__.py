"""Simulation engines: clients trained in this process (more engines come with scale-out)."""

from .engine import InProcessClients
from .pool import ProcessPoolClients
from .vectorized import VectorizedClients

__all__ = ["InProcessClients", "ProcessPoolClients", "VectorizedClients"]
