"""Name -> factory registries, so a user adds a model or dataset in their own file.

    import fedloom

    @fedloom.register_model("tiny")
    def tiny(input_shape, num_classes):
        return torch.nn.Linear(int(numpy.prod(input_shape)), num_classes)

and then ``model = "tiny"`` in the config file works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping of lower-case names to factories, with errors that list what is available."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    @overload
    def register(
        self, name: str, obj: None = None, *, overwrite: bool = False
    ) -> Callable[[T], T]: ...

    def register(
        self, name: str, obj: T | None = None, *, overwrite: bool = False
    ) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""
        key = name.lower()

        def add(item: T) -> T:
            if key in self._items and not overwrite and self._items[key] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = item
            return item

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Remove ``name`` if registered (e.g. a test's temporary entry)."""
        self._items.pop(name.lower(), None)

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS: Registry[Callable[..., Any]] = Registry("model")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
PARTITIONERS: Registry[Callable[..., Any]] = Registry("partitioner")
STRATEGIES: Registry[Callable[..., Any]] = Registry("strategy")
AGGREGATORS: Registry[Callable[..., Any]] = Registry("aggregator")
# a Task factory by name, for ``[task] factory = "name"`` (as an import path names your own)
TASKS: Registry[Callable[..., Any]] = Registry("task")
# ``simulation.engine`` -> a builder ``(config, task) -> (ParamSpec -> backend)``; the built-in
# engines are registered by :mod:`fedloom.compose.engines`, which may import the config
ENGINES: Registry[Callable[..., Any]] = Registry("engine")

register_model = MODELS.register
register_dataset = DATASETS.register
register_partitioner = PARTITIONERS.register
register_strategy = STRATEGIES.register
register_aggregator = AGGREGATORS.register
register_task = TASKS.register
register_engine = ENGINES.register
