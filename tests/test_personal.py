"""Personalised evaluation: each client's own model (global, FedPer head, Ditto's v_k, IFCA's
cluster) on the test set, weighted by the client's train label distribution."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch
from conftest import NUM_CLASSES, make_tiny_task, tiny_dataset, tiny_mlp, tiny_parts

from fedloom import ClassificationTask, FedAvg, Federation
from fedloom.algorithms import IFCA, Ditto, FedPer, KMeansClustered
from fedloom.personal import per_class_accuracy, personalised_accuracy


def expected_accuracy(task, fed, cid: int, flat=None, head=None) -> float:
    """By hand: a fresh model with the client's weights, sample by sample."""
    model = task.build_model()
    weights = {
        n: t.clone() for n, t in fed.spec.unflatten(fed.params if flat is None else flat).items()
    }
    model.load_state_dict({**model.state_dict(), **weights, **(head or {})})
    model.eval()
    correct, total = Counter(), Counter()
    with torch.no_grad():
        for x, y in zip(task.dataset.test_x, task.dataset.test_y):
            total[int(y)] += 1
            correct[int(y)] += int(int(model(x[None]).argmax()) == int(y))
    counts = Counter(int(y) for y in task.dataset.train_y[task.parts[cid]])
    present = [c for c in range(NUM_CLASSES) if total[c]]
    return sum(counts[c] * correct[c] / total[c] for c in present) / sum(counts[c] for c in present)


def summary(values: list[float]) -> tuple[float, float]:
    worst = sorted(values)[: max(1, math.ceil(len(values) / 10))]
    return sum(values) / len(values), sum(worst) / len(worst)


def check(task, fed, per_client: dict[int, float]) -> None:
    before = fed.params.clone(), [t.detach().clone() for t in fed.model.state_dict().values()]
    rng = torch.get_rng_state()
    got = personalised_accuracy(task, fed)
    assert got["per_client"] == pytest.approx(per_client, rel=1e-9)
    mean, worst = summary(list(per_client.values()))
    assert got["personal_accuracy"] == pytest.approx(mean)
    assert got["personal_accuracy_worst10"] == pytest.approx(worst)
    assert torch.equal(fed.params, before[0]) and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(fed.model.state_dict().values(), before[1]))


def test_global_model_for_strategies_without_client_models():
    task = make_tiny_task()
    fed = Federation(task, FedAvg(clients_per_round=3), rounds=2, seed=0)
    fed.run()
    check(task, fed, {c: expected_accuracy(task, fed, c) for c in range(6)})
    sub = personalised_accuracy(task, fed, clients=[4, 1])
    assert list(sub["per_client"]) == [4, 1]
    # the unweighted test accuracy is the uniform-label special case of the per-class view
    acc = per_class_accuracy(task, fed.model)
    counts = torch.bincount(task.dataset.test_y, minlength=NUM_CLASSES).double()
    assert float((acc * counts).sum() / counts.sum()) == pytest.approx(fed.evaluate()["accuracy"])


def test_fedper_uses_each_clients_head():
    task = make_tiny_task()
    fed = Federation(task, FedPer(clients_per_round=3), rounds=2, seed=0)
    fed.run()
    states = fed.backend.state_dict()["clients"]
    init_head = {n: t.detach().clone() for n, t in fed.model.state_dict().items() if n[0] == "2"}
    per_client = {
        c: expected_accuracy(task, fed, c, head=states.get(str(c), {}).get("personal", init_head))
        for c in range(6)
    }
    check(task, fed, per_client)
    assert len(states) < 6  # some clients never trained: the initial head


def test_ditto_and_ifca_use_the_clients_own_models():
    task = make_tiny_task()
    fed = Federation(task, Ditto(lam=0.5, clients_per_round=3), rounds=2, seed=0)
    fed.run()
    states = fed.backend.state_dict()["clients"]
    own = {c: states[str(c)]["ditto"] if str(c) in states else None for c in range(6)}
    check(task, fed, {c: expected_accuracy(task, fed, c, flat=own[c]) for c in range(6)})
    for strategy in (IFCA(clusters=2, init_noise=0.5, clients_per_round=3), KMeansClustered(2)):
        task = make_tiny_task()
        fed = Federation(task, strategy, rounds=2, seed=0)
        fed.run()
        flats = {c: strategy.client_model(c, {}) for c in range(6)}
        check(task, fed, {c: expected_accuracy(task, fed, c, flat=flats[c]) for c in range(6)})


def test_classes_missing_from_the_test_set_are_left_out():
    d = tiny_dataset()
    keep = d.test_y != 2
    d = dataclasses.replace(d, test_x=d.test_x[keep], test_y=d.test_y[keep])
    task = ClassificationTask(tiny_mlp, d, tiny_parts(), lr=0.1, batch_size=4)
    fed = Federation(task, FedAvg(), rounds=1, seed=0)
    fed.run()
    assert bool(per_class_accuracy(task, fed.model).isnan()[2])
    check(task, fed, {c: expected_accuracy(task, fed, c) for c in range(6)})


def test_only_classification_tasks():
    task = make_tiny_task()
    fed = Federation(task, FedAvg(), rounds=1)
    with pytest.raises(TypeError, match="ClassificationTask"):
        personalised_accuracy(object(), fed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no clients"):
        personalised_accuracy(task, fed, clients=[])
