"""SecAgg errors (defined in :mod:`fedloom.errors` with the others): a refused message
(counted, the round goes on) and an aborted round."""

from __future__ import annotations

from ...errors import SECAGG_REFUSALS as REFUSAL_KINDS
from ...errors import SecAggAbort, SecAggRefused

__all__ = ["REFUSAL_KINDS", "SecAggAbort", "SecAggRefused"]
