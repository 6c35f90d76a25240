"""Other frameworks' task code and names, run by fedloom: ``fedloom.adapters.alphamed`` (an
AlphaMed task's hooks as a :class:`fedloom.Task`) and ``fedloom.adapters.openfed`` (OpenFed's
aggregate triggers and stop rule). FedLab's trainer shape is ``fedloom.runtime.ClientTrainer``
and asmallbit's ``conf.json`` is read by :func:`fedloom.load_config` itself.
"""

from .alphamed import AlphaMedScheduler, AlphaMedTask
from .openfed import AggregateCount, AggregatePeriod, AggregateTrigger, StopAtVersion

__all__ = [
    "AggregateCount",
    "AggregatePeriod",
    "AggregateTrigger",
    "AlphaMedScheduler",
    "AlphaMedTask",
    "StopAtVersion",
]
