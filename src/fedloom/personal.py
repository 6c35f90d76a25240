"""Personalised evaluation: how well each client's *own* model does on the client's data.

Personalisation (Ditto, FedPer) and clustering (IFCA, clustered FL) give each client a model
of its own, which the server-side test of one global model does not measure. A strategy says
which model a client ends with through ``strategy.client_model(cid, state) -> Tensor | None``:
a flat buffer laid out like the Federation's ``params`` (Ditto: the personal model v_k;
IFCA / clustered FL: the model of the client's cluster), or None for "the global model".
``state`` is the client's state kept by the backend (``ctx.state`` and the engine's entries);
when the task has personal layers, the client's own copy of them (``state["personal"]``,
FedPer's head) is loaded on top. Strategies without ``client_model`` evaluate the global
model (with the client's personal layers, if any) for every client.

Clients have no test sets of their own here, so a client's accuracy is the shared test set's
per-class accuracy weighted by the client's *training* label distribution, a proxy for a test
set drawn like its data (classes absent from the test set are left out of the weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import torch

from .classification import ClassificationTask
from .params import ParamSpec


class Federated(Protocol):
    """What :func:`personalised_accuracy` reads of a :class:`~fedloom.federation.Federation`
    (its model, flat parameters and spec, strategy, and the backend's client states).

    A protocol rather than the class itself: this module sits below the round loop, which it
    only reads."""

    model: torch.nn.Module
    params: torch.Tensor
    spec: ParamSpec
    strategy: Any
    backend: Any


@torch.no_grad()
def per_class_accuracy(task: ClassificationTask, model: torch.nn.Module) -> torch.Tensor:
    """Accuracy of ``model`` on each class of the task's test set (NaN for absent classes)."""
    was_training = model.training
    model.eval()
    classes = task.dataset.num_classes
    correct = torch.zeros(classes, dtype=torch.float64)
    x, y = task._test_x, task._test_y
    for i in range(0, len(y), task.eval_batch_size):
        yb = y[i : i + task.eval_batch_size]
        hit = model(x[i : i + task.eval_batch_size]).argmax(1) == yb
        correct += torch.bincount(yb[hit], minlength=classes).double().cpu()
    model.train(was_training)
    total = torch.bincount(y, minlength=classes).double().cpu()
    return correct / total  # 0/0 is NaN: classes the test set lacks


def personalised_accuracy(
    task: ClassificationTask, fed: Federated, clients: Iterable[int] | None = None
) -> dict[str, Any]:
    """Each client's own model on the test set, weighted by its train label distribution.

    Returns ``{"personal_accuracy": mean over clients (unweighted),
    "personal_accuracy_worst10": mean of the worst 10% of clients (at least one),
    "per_client": {cid: accuracy}}``. The Federation's model is used for evaluation and left
    exactly as it was (parameters and personal layers restored).
    """
    if not isinstance(task, ClassificationTask):
        raise TypeError(f"personalised_accuracy needs a ClassificationTask, got {type(task)}")
    ids = list(range(task.num_clients)) if clients is None else [int(c) for c in clients]
    if not ids:
        raise ValueError("personalised_accuracy: no clients to evaluate")
    states = fed.backend.state_dict().get("clients", {})
    own = fed.strategy.client_model
    fed_names = set(fed.spec.names)
    heads = {
        n: t
        for n, t in fed.model.state_dict(keep_vars=True).items()
        if n not in fed_names
        and any(n == p or n.startswith(p.rstrip(".") + ".") for p in task.personal_layers)
    }
    saved = fed.params.clone()
    saved_heads = {n: t.detach().clone() for n, t in heads.items()}
    cache: dict[Any, torch.Tensor] = {}
    keep: list[torch.Tensor] = []  # so cache keys (addresses) are not reused meanwhile
    out: dict[int, float] = {}
    try:
        for cid in ids:
            state = states.get(str(cid), {})
            flat = own(cid, state)
            head = state.get("personal") if heads else None
            if head is not None:  # a head of its own: nothing to share with other clients
                key: Any = None
            else:
                key = "global" if flat is None else flat.data_ptr()
            if key is None or key not in cache:
                if flat is not None:
                    keep.append(flat)
                fed.params.copy_(saved if flat is None else flat)
                with torch.no_grad():
                    for n, t in heads.items():
                        t.copy_(saved_heads[n] if head is None else head[n])
                acc = per_class_accuracy(task, fed.model)
                if key is not None:
                    cache[key] = acc
            else:
                acc = cache[key]
            labels = task.dataset.train_y[task.parts[cid]]
            p = torch.bincount(labels, minlength=task.dataset.num_classes).double()
            p[acc.isnan()] = 0
            out[cid] = float((p * acc.nan_to_num()).sum() / p.sum()) if p.sum() > 0 else math.nan
    finally:
        fed.params.copy_(saved)
        with torch.no_grad():
            for n, t in heads.items():
                t.copy_(saved_heads[n])
    values = sorted(v for v in out.values() if not math.isnan(v))
    worst = values[: max(1, math.ceil(len(values) / 10))]
    return {
        "personal_accuracy": sum(values) / len(values) if values else math.nan,
        "personal_accuracy_worst10": sum(worst) / len(worst) if values else math.nan,
        "per_client": out,
    }
