"""The optional hooks of a backend (where clients train), declared once with no-op defaults.

The round loop's :class:`~fedloom.federation.loop.Backend` protocol names what every backend
does (``available_clients``, ``distribute``, ``collect``, ``state_dict``,
``load_state_dict``) and three hooks most backends need not fill. A backend that inherits
:class:`BackendBase` has all three, so the loop, its callbacks and the experiment call them
instead of probing with ``getattr``. It lives below the engines so that the simulation, the
network runtime and deployments can all inherit it.
"""

from __future__ import annotations

from typing import Any


class BackendBase:
    """No-op defaults of a backend's optional hooks; override the ones a backend has."""

    def close(self) -> None:
        """Release what the backend holds (worker processes, a process group); idempotent."""

    def round_stats(self) -> dict[str, Any]:
        """Figures of the backend's own for the round just collected (the network aggregator's
        refused calls, say), merged into the round's record."""
        return {}

    def node_metrics(self) -> dict[str, dict[str, float]]:
        """Per-node figures of the round just collected, by node name (a hierarchy's)."""
        return {}
