"""FedPer (Arivazhagan, Aggarwal, Singh and Choudhary 2019, "Federated Learning with
Personalization Layers").

The model is split into *base layers*, federated as FedAvg federates a whole model, and
*personalisation layers* (the head), which each client trains together with the base in its
local epochs but keeps: they are never sent, averaged or overwritten by the server. This
targets statistical heterogeneity: a shared representation, a per-client decision layer.

fedloom already keeps :attr:`Task.personal_layers` per client (excluded from the federated
spec, saved and restored by the backend for each client). This strategy names them:
:class:`~fedloom.Federation` calls :meth:`FedPer.prepare` before it flattens the model, which
sets ``task.personal_layers``. Build the Federation with the default backend (or a backend
factory), since a backend built beforehand has already flattened the model without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..aggregation import Aggregator
from ..params import ParamSpec
from ..registry import register_strategy
from ..task import Task
from .fedavg import FedAvg


def last_layer(model: nn.Module) -> str:
    """Name prefix of the last module (in ``named_modules`` order) owning parameters."""
    names = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not names or names[-1] == "":
        raise ValueError(
            "FedPer: the model's parameters belong to its root module, so there is no last "
            "layer to keep personal; pass personal_layers explicitly"
        )
    return str(names[-1])


@register_strategy("fedper")
class FedPer(FedAvg):
    """FedAvg over the base layers; the personalisation layers stay on each client.

    Args:
        personal_layers: name prefixes of the personalisation layers (e.g. ``["fc2"]``: the
            paper keeps the last one or two layers personal). None: the task's own
            ``personal_layers`` if it names some, else the model's last module that owns
            parameters (found on the Federation's freshly built model; for
            ``Sequential(Linear, ReLU, Linear)`` that is ``"2"``).
        clients_per_round / fraction / weighted / aggregator: as :class:`FedAvg`.

    Raises ValueError (at Federation construction) if the task already names different
    personal layers, if the prefixes match no parameter, or if nothing would be federated.
    """

    def __init__(
        self,
        personal_layers: Sequence[str] | str | None = None,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
    ):
        super().__init__(clients_per_round, fraction, weighted, aggregator)
        if isinstance(personal_layers, str):
            personal_layers = (personal_layers,)
        if personal_layers is not None:
            personal_layers = tuple(personal_layers)
            if not personal_layers or not all(isinstance(p, str) and p for p in personal_layers):
                raise ValueError(
                    f"personal_layers must be None or non-empty name prefixes, got "
                    f"{personal_layers!r}"
                )
        self.personal_layers: tuple[str, ...] | None = personal_layers

    def prepare(self, task: Task, model: nn.Module, seed: int) -> None:
        """Set ``task.personal_layers`` (called by the Federation before flattening)."""
        own = tuple(task.personal_layers)
        layers = self.personal_layers or own or (last_layer(model),)
        if own and own != layers:
            raise ValueError(
                f"FedPer: personal_layers={layers!r} but the task already keeps {own!r} "
                "personal; name the same layers or leave one of them unset"
            )
        floating = ParamSpec.from_module(model).names
        federated = set(ParamSpec.from_module(model, layers).names)
        if len(federated) == len(floating):
            raise ValueError(f"FedPer: personal_layers {layers!r} match no model tensor")
        if not federated:
            raise ValueError(f"FedPer: personal_layers {layers!r} leave no shared base layer")
        task.personal_layers = layers

    def client_model(self, cid: int, state: dict[str, Any]) -> torch.Tensor | None:
        """None: a client's model is the global base plus its own head, which the backend
        keeps in ``state["personal"]`` (read there by :func:`fedloom.personal`)."""
        return None
