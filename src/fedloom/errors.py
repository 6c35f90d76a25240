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
