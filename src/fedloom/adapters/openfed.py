"""OpenFed's trigger and stop-rule names for fedloom's own rules.

``AggregateCount(count)`` and ``AggregatePeriod(period)`` go to an asynchronous run's
``AsyncFederation(..., triggers=[...])`` (where OpenFed calls ``set_aggregate_triggers``);
``StopAtVersion(max_version)`` goes in ``callbacks=[...]`` of any run (where OpenFed calls
``register_step``). They are :mod:`fedloom.federation.triggers`' classes, not copies.
"""

from ..federation.triggers import AggregateCount, AggregatePeriod, AggregateTrigger, StopAtVersion

__all__ = ["AggregateCount", "AggregatePeriod", "AggregateTrigger", "StopAtVersion"]
