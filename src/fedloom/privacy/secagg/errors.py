"""SecAgg errors: a refused message (counted, the round goes on) and an aborted round.

TODO(merge): move both into ``fedloom/errors.py`` with the other fedloom errors.
"""

from __future__ import annotations

from ...errors import FedloomError

#: every kind a party counts in its ``refused`` counter
REFUSAL_KINDS = (
    "malformed",  # wrong type, length, size, value out of range, ids that do not add up
    "stale_round",  # a message bound to another round (replayed from an earlier one)
    "out_of_order",  # a message for a stage other than the current one
    "unknown_sender",  # a sender that has no place at this stage (not a client, not a neighbour)
    "duplicate",  # a second message from the same sender in the same stage
    "misrouted",  # an encrypted share addressed to another client
    "decrypt",  # a share whose authenticated decryption fails (wrong key, altered bytes)
    "inconsistent",  # a masked input whose mask set does not match the server's view
)


class SecAggAbort(FedloomError, RuntimeError):
    """The round can not produce a sum: too few clients left to reconstruct the masks."""

    def __init__(self, round: int, stage: str, reason: str):
        self.round = round
        self.stage = stage
        super().__init__(f"secure aggregation round {round} aborted at {stage}: {reason}")


class SecAggRefused(FedloomError, ValueError):
    """One message refused; ``kind`` is one of :data:`REFUSAL_KINDS`."""

    def __init__(self, kind: str, detail: str):
        assert kind in REFUSAL_KINDS, kind
        self.kind = kind
        super().__init__(f"refused ({kind}): {detail}")
