"""Deployments from a config: which process is the aggregator, a data holder or a relay, and
how each is built and launched.

    roles.py   a process's role (a flag, or torchrun's RANK); the aggregator backend, a data
               holder and the token/TLS/server settings, from a config (``fedloom server``,
               ``client``, ``start``)
    launch.py  ``fedloom launch``: an aggregator and clients, or a whole topology, as processes
    relay.py   ``fedloom node``: one relay of a config's ``[topology]``
    local.py   :class:`LocalFederation`: the own-loop API's ``jobs()`` in this process, over the
               round loop (``fedloom.LocalFederation``)

Why a package of its own, at the top: every piece here reads a :class:`~fedloom.config.Config`
and builds through :mod:`fedloom.compose` (the task, the strategy, the hierarchy), so it is
composition, beside ``experiment.py``, ``compose/`` and ``cli.py``. The network runtime
(:mod:`fedloom.runtime`: server, client, transport, TLS, the relay's engine) stays below it
and imports no config, so it can be driven by hand, or by any other composition.
"""
