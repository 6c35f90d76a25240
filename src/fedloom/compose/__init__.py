"""The composition root's parts: each section of a config builds its own piece.

    data.py      [data]                  the dataset and its split
    task.py      [data] [model] [train]  the Task (built-in classification by default)
    factory.py   [task]                  a Task of your own: ``factory = "module:callable"``
    strategy.py  [strategy]              the strategy and its aggregator
    engines.py   [simulation]            the engine, from the ENGINES registry
    threads.py   simulation.threads      torch's thread count, the same in every process
    attack.py    [attack]                attackers: a flipped task or attacked updates
    record.py    [output] [notify]       the run directory, the recorder, notifiers
    loop.py      rounds [eval]           the round loop over all of the above

:meth:`fedloom.Experiment.from_config` calls them in that order. Why here, above the round
loop: a builder reads the config and imports the engines it registers, which the engines
themselves (below the config) must not.
"""

from . import engines as engines  # registers the built-in engines
