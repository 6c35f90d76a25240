"""Exceptions fedloom raises. Each names what was wrong and where, so a user can fix it."""

from __future__ import annotations


class FedloomError(Exception):
    """Base class of every fedloom error."""


class WireError(FedloomError, ValueError):
    """Bytes from another party that do not match the model spec (names, shapes, dtypes, values)."""


class ConfigError(FedloomError, ValueError):
    """A configuration key or value that is not allowed."""


class ClientError(FedloomError, RuntimeError):
    """User code failed while training or evaluating one client; names the client and round."""

    def __init__(self, client_id: int, round: int, stage: str, cause: BaseException):
        self.client_id = client_id
        self.round = round
        self.stage = stage
        super().__init__(
            f"client {client_id} failed in round {round} during {stage}: "
            f"{type(cause).__name__}: {cause}"
        )


class CheckpointError(FedloomError, ValueError):
    """A checkpoint that is missing or does not belong to this run."""


class DatasetError(FedloomError, ValueError):
    """A dataset file that is missing, corrupt or of the wrong format."""


class QuorumError(FedloomError, RuntimeError):
    """Too few clients returned an update for a round to count."""


class RunDirError(FedloomError, FileExistsError):
    """A run directory that already holds an earlier run's results (see ``--overwrite``)."""


class ClientStateError(FedloomError, TypeError):
    """A client's state that can not be spilled to disk and read back safely."""


class NotifyError(FedloomError, RuntimeError):
    """A notification could not be delivered (network error, HTTP error, API refusal)."""


class TopologyError(ConfigError):
    """An invalid topology. ``problems`` lists each one, naming the nodes involved."""

    SHOWN = 10  # a 1,000-node tree with one mistake repeated should not print 1,000 lines

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = len(problems) - self.SHOWN
        tail = [f"... and {more} more"] if more > 0 else []
        super().__init__("invalid topology: " + "; ".join(problems[: self.SHOWN] + tail))


class RefusedError(FedloomError, PermissionError):
    """The aggregator refused this client (unknown client, bad token, wrong task)."""


class UnreachableError(FedloomError, ConnectionError):
    """The aggregator did not answer for ``retry_for`` seconds (not running, wrong address)."""


class JobError(FedloomError, ValueError):
    """What the user's loop handed a job does not fit (model spec, values, sample count,
    metrics), or the job was used twice; nothing was sent."""


class BulkRefused(FedloomError, RuntimeError):
    """The aggregator answered a bulk request with a refusal (``code`` is a gRPC status name)."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


#: every kind a SecAgg party counts in its ``refused`` counter
SECAGG_REFUSALS = (
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
    """One message refused; ``kind`` is one of :data:`SECAGG_REFUSALS`."""

    def __init__(self, kind: str, detail: str):
        assert kind in SECAGG_REFUSALS, kind
        self.kind = kind
        super().__init__(f"refused ({kind}): {detail}")


__all__ = [
    "SECAGG_REFUSALS",
    "BulkRefused",
    "CheckpointError",
    "ClientError",
    "ClientStateError",
    "ConfigError",
    "DatasetError",
    "FedloomError",
    "JobError",
    "NotifyError",
    "QuorumError",
    "RefusedError",
    "RunDirError",
    "SecAggAbort",
    "SecAggRefused",
    "TopologyError",
    "UnreachableError",
    "WireError",
]
