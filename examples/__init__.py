"""Makes ``examples`` importable from the repository root, so a config can name
``examples.custom_task:make_task`` as its ``[task] factory``."""
