"""Simulation engines: clients trained in this process (more engines come with scale-out)."""

from .engine import InProcessClients
from .vectorized import VectorizedClients

__all__ = ["InProcessClients", "VectorizedClients"]
