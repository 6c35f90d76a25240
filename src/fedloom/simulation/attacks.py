"""Byzantine clients for robustness tests, in simulation: a seeded share of the clients attacks.

With ``x`` the round's global model, ``y`` an attacker's honestly trained model and
``delta = y - x`` its honest update, an attacker sends instead:

* ``sign_flip``: ``x - scale * delta``, its update reversed and scaled (the sign-flipping attack
  of the Byzantine-robust literature, e.g. Li et al. 2019, "RSA", where a worker sends its true
  message times ``-r``; fedloom's updates are models, so the flipped delta is added to ``x``).
  ``scale = 1`` is the plain reversal; larger scales are stronger attacks.
* ``scaled_noise``: ``x + eps``, ``eps ~ N(0, (scale * rms(delta))^2)`` per coordinate, where
  ``rms(delta) = ||delta|| / sqrt(d)``: Gaussian noise in place of its update (the Gaussian
  Byzantine workers of Blanchard et al. 2017 send ``N(0, sigma^2)``; here sigma is sized from an
  honest update, so one ``scale`` means the same on every model: ``E||eps|| ~ scale*||delta||``).
* ``label_flip``: trains honestly on labels ``y -> C - 1 - y`` (the label-flipping attack as
  Fang et al. 2020 define it; Tolpegin et al. 2020); the task is wrapped before the backend is
  built, the updates are left alone.

The first two are applied by :class:`AttackedClients`, a backend wrapper; the noise is seeded
from ``(seed, round, client)``, so attacked runs are as reproducible as honest ones. Every
tensor of the flat buffer is attacked, BatchNorm statistics included.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..seeding import derive_seed
from ..task import ClientContext, Task
from ..update import ClientUpdate


def choose_attackers(num_clients: int, fraction: float, seed: int) -> list[int]:
    """``round(fraction * num_clients)`` client ids (sorted), drawn from the run seed."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    k = int(fraction * num_clients + 0.5)
    rng = np.random.default_rng(derive_seed(seed, "attackers"))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


class UpdateAttack:
    """Rewrites an attacker's update in place: ``apply(y, x, generator)``."""

    name: ClassVar[str] = ""

    def __init__(self, scale: float = 1.0):
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def apply(self, y: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class SignFlip(UpdateAttack):
    """Sends ``x - scale * (y - x)``."""

    name = "sign_flip"

    def apply(self, y: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> None:
        y.sub_(x).mul_(-self.scale).add_(x)


class ScaledNoise(UpdateAttack):
    """Sends ``x + N(0, (scale * rms(y - x))^2)``."""

    name = "scaled_noise"

    def apply(self, y: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> None:
        rms = float(torch.linalg.vector_norm(y - x)) / math.sqrt(max(y.numel(), 1))
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        y.copy_(x).add_(noise, alpha=self.scale * rms)


class LabelFlip:
    """Wraps a classification task so that attackers' training batches ``(x, y)`` carry the
    labels ``num_classes - 1 - y`` (``train_step`` and any loop over ``train_loader`` see them).

    Args:
        num_classes: ``C``; by default the task's ``dataset.num_classes``.
    """

    name = "label_flip"

    def __init__(self, num_classes: int | None = None):
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes

    def wrap(self, task: Task, attackers: Iterable[int]) -> Task:
        """A shallow copy of ``task`` (data shared) of a subclass that flips the labels."""
        classes = self.num_classes or getattr(getattr(task, "dataset", None), "num_classes", None)
        if not isinstance(classes, int) or classes < 2:
            raise ValueError(
                f"label flip needs the number of classes: {type(task).__name__} has no "
                "dataset.num_classes; pass LabelFlip(num_classes=...)"
            )
        wrapped = copy.copy(task)
        wrapped.__class__ = _label_flipping(type(task))
        wrapped._flip = (frozenset(int(a) for a in attackers), classes)  # type: ignore[attr-defined]
        return wrapped

    def __repr__(self) -> str:
        return f"LabelFlip(num_classes={self.num_classes})"


@functools.cache
def _label_flipping(base: type[Task]) -> type[Task]:
    """``base`` with a ``train_loader`` flipping the labels of the clients in ``self._flip``."""

    def train_loader(self: Any, client_id: int, ctx: ClientContext) -> Iterable[Any]:
        batches: Iterable[Any] = base.train_loader(self, client_id, ctx)
        attackers, classes = self._flip
        if client_id not in attackers:
            return batches
        return (_flip_labels(b, classes) for b in batches)

    return type(f"LabelFlipped{base.__name__}", (base,), {"train_loader": train_loader})


def _flip_labels(batch: Any, classes: int) -> Any:
    x, y, *rest = batch
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"label flip needs integer label tensors, got {type(y).__name__}")
    return (x, (classes - 1) - y, *rest)


ATTACKS: dict[str, type] = {c.name: c for c in (SignFlip, ScaledNoise, LabelFlip)}


class AttackedClients(BackendBase):
    """A backend whose ``attackers`` send ``attack``-ed updates; the others pass through.

    Wraps any backend (``InProcessClients``, ``VectorizedClients``...). The global model is
    copied once per round; an attacker's update is copied into a buffer of this wrapper (the
    backend's buffer is not ours to change), valid until the next update is drawn.
    """

    def __init__(self, backend: Any, attack: UpdateAttack, attackers: Iterable[int], seed: int = 0):
        if not isinstance(attack, UpdateAttack):
            raise TypeError(f"{attack!r} does not rewrite updates (label flip wraps the task)")
        self.backend, self.attack, self.seed = backend, attack, seed
        self.attackers = frozenset(int(a) for a in attackers)
        self._x: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._round = 0

    def available_clients(self, round: int) -> list[int]:
        clients: list[int] = self.backend.available_clients(round)
        return clients

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        if self._x is None or self._x.shape != global_params.shape:
            self._x = torch.empty_like(global_params)
        self._x.copy_(global_params)
        self._round = round
        self.backend.distribute(round, plan, global_params)

    def collect(self) -> Iterator[ClientUpdate]:
        for u in self.backend.collect():
            if u.client_id not in self.attackers or "error" in u.extras:
                yield u
                continue
            assert self._x is not None, "collect called before distribute"
            if self._buf is None or self._buf.shape != u.params.shape:
                self._buf = torch.empty_like(u.params)
            self._buf.copy_(u.params)
            seed = derive_seed(self.seed, "attack", self._round, u.client_id)
            gen = torch.Generator(device=self._buf.device).manual_seed(seed)
            self.attack.apply(self._buf, self._x.view_as(self._buf), gen)
            yield dataclasses.replace(u, params=self._buf)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.backend.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.backend.load_state_dict(state)

    def close(self) -> None:
        self.backend.close()

    def round_stats(self) -> dict[str, Any]:
        return dict(self.backend.round_stats())

    def node_metrics(self) -> dict[str, dict[str, float]]:
        return dict(self.backend.node_metrics())

    def __getattr__(self, name: str) -> Any:  # the wrapped backend's other attributes
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)
