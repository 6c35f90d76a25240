"""Simulation engines: clients trained in this process (more engines come with scale-out)."""

from .engine import InProcessClients

__all__ = ["InProcessClients"]
