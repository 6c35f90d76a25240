"""``torch.optim.SGD`` and ``torch.optim.Adam`` without the 1.6 s first call.

In torch 2.13 the eager methods of every optimizer are wrapped for ``torch.compile``:
``add_param_group`` (run by ``__init__``), ``zero_grad``, ``state_dict`` and
``load_state_dict`` by ``torch._disable_dynamo``, which imports ``torch._dynamo`` on its first
call, and ``step`` by ``_use_grad_for_differentiable``, which imports it on every call. Importing
``torch._dynamo`` costs ~1.6 s (on a 2-core machine), half a plain script's start-up, to run
code that in eager mode does nothing: nothing is being compiled, and nothing can be until
``torch._dynamo`` is imported.

:class:`SGD` and :class:`Adam` are torch's classes (subclasses, same constructor, same state
dicts, bit-identical updates) that, while ``torch._dynamo`` is not imported, call torch's own
undecorated methods (each wrapper's ``__wrapped__``), ``step`` under the grad mode torch's
wrapper sets. Once ``torch._dynamo`` is imported (its cost paid, a ``torch.compile`` possible)
or while compiling, every method is torch's decorated one, so compiled code sees exactly
torch's optimizer. A torch whose wrappers are not the ones recognised here gets torch's methods.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["SGD", "Adam"]

_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_Opt = TypeVar("_Opt", bound=type[torch.optim.Optimizer])


def _torch_path() -> bool:
    """True when torch's decorated methods must run: torch._dynamo is imported (its cost is
    paid, and a compiled region's eager part needs torch's ``disable``) or we are compiling."""
    return "torch._dynamo" in sys.modules or torch.compiler.is_compiling()


def _unwrap(fn: Any, wrapper: str, file: str) -> Any:
    """``fn.__wrapped__`` if ``fn`` is torch's wrapper function ``wrapper`` defined in ``file``,
    else None (an unknown wrapper: its behaviour is not known to be skippable)."""
    code = getattr(fn, "__code__", None)
    inner = getattr(fn, "__wrapped__", None)
    if code is None or inner is None or code.co_name != wrapper:
        return None
    return inner if code.co_filename.replace("\\", "/").endswith(file) else None


def _without_profile_hook(fn: Any) -> Any:
    """``fn`` less the profiling wrapper(s) ``Optimizer._patch_step_function`` puts on a
    class's ``step`` (a torch optimizer built before ours hooks the torch class); None if one
    cannot be removed. Our own ``step`` gets that wrapper in turn, so hooks run once."""
    while fn is not None and getattr(fn, "hooked", False):
        fn = _unwrap(fn, "wrapper", "torch/optim/optimizer.py")
    return fn


class _NoDynamoImport(torch.optim.Optimizer):
    """The mixin: the four ``torch._disable_dynamo`` methods, called undecorated in eager mode.

    ``_raw`` (set by :func:`_eager`) maps each method name to torch's undecorated function, or
    None where torch's method is not the recognised wrapper (then torch's method runs).
    """

    _raw: dict[str, Callable[..., Any] | None] = dict.fromkeys(_METHODS)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raw = self._raw["add_param_group"]
        if raw is None or _torch_path():
            super().add_param_group(param_group)
        else:
            raw(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        raw = self._raw["zero_grad"]
        if raw is None or _torch_path():
            super().zero_grad(set_to_none)
        else:
            raw(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        raw = self._raw["state_dict"]
        if raw is None or _torch_path():
            return super().state_dict()
        state: dict[str, Any] = raw(self)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        raw = self._raw["load_state_dict"]
        if raw is None or _torch_path():
            super().load_state_dict(state_dict)
        else:
            raw(self, state_dict)


for _name in _METHODS:  # torch's docstrings for help()
    getattr(_NoDynamoImport, _name).__doc__ = getattr(torch.optim.Optimizer, _name).__doc__


def _eager(base: type[torch.optim.Optimizer]) -> Callable[[_Opt], _Opt]:
    """Class decorator: resolve ``base``'s undecorated methods for ``cls`` (a subclass of
    :class:`_NoDynamoImport` and ``base``) and give it a ``step`` calling ``base``'s raw step."""

    def decorate(cls: _Opt) -> _Opt:
        raw: dict[str, Callable[..., Any] | None] = {}
        for name in _METHODS:
            # only a method torch defines once, on Optimizer, wrapped by _disable_dynamo
            fn = getattr(base, name)
            own = fn is getattr(torch.optim.Optimizer, name)
            raw[name] = _unwrap(fn, "inner", "torch/_compile.py") if own else None
        cls._raw = raw  # type: ignore[attr-defined]
        torch_step = _without_profile_hook(base.__dict__.get("step"))
        raw_step = _unwrap(torch_step, "_use_grad", "torch/optim/optimizer.py")
        if raw_step is None:
            return cls  # torch's own step (and its import): a wrapper we do not know

        def step(self: torch.optim.Optimizer, closure: Callable[[], float] | None = None) -> Any:
            if _torch_path():
                return torch_step(self, closure)
            prev = torch.is_grad_enabled()
            try:  # what torch's _use_grad does, less its torch._dynamo.graph_break() calls
                torch.set_grad_enabled(self.defaults["differentiable"])
                return raw_step(self, closure)
            finally:
                torch.set_grad_enabled(prev)

        step.__doc__ = raw_step.__doc__
        step.__qualname__ = f"{cls.__qualname__}.step"
        cls.step = step  # type: ignore[method-assign]
        return cls

    return decorate


@_eager(torch.optim.SGD)
class SGD(_NoDynamoImport, torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments, state dicts and updates) whose first call does not
    import ``torch._dynamo``: torch 2.13 pays ~1.6 s for that import on an optimizer's first
    method call (``__init__`` included), for nothing in eager mode. See :mod:`fedloom.optim`."""


@_eager(torch.optim.Adam)
class Adam(_NoDynamoImport, torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments, state dicts and updates) whose first call does not
    import ``torch._dynamo``: torch 2.13 pays ~1.6 s for that import on an optimizer's first
    method call (``__init__`` included), for nothing in eager mode. See :mod:`fedloom.optim`."""
