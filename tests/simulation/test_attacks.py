"""Attacks for robustness tests: each transform by hand, attackers drawn from the seed, the
backend wrapper, label flipping only for attackers, the config section and a run in which the
median survives sign flippers that wreck the mean."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from conftest import make_tiny_task, run_overrides

from fedloom import ClientUpdate, FedAvg, Federation, RoundPlan
from fedloom.aggregation import CoordinateMedian
from fedloom.backend import BackendBase
from fedloom.config import AttackConfig, Config
from fedloom.errors import ConfigError
from fedloom.experiment import Experiment
from fedloom.seeding import derive_seed
from fedloom.simulation import (
    ATTACKS,
    AttackedClients,
    InProcessClients,
    LabelFlip,
    ScaledNoise,
    SignFlip,
    choose_attackers,
)
from fedloom.task import ClientContext

X, Y = [1.0, 2.0, -1.0], [2.0, 0.0, -1.0]  # global model, honest update: delta = (1, -2, 0)


def test_sign_flip_by_hand():
    for scale, expected in ((1.0, [0.0, 4.0, -1.0]), (10.0, [-9.0, 22.0, -1.0])):
        y = torch.tensor(Y)
        SignFlip(scale).apply(y, torch.tensor(X), torch.Generator())
        assert y.tolist() == pytest.approx(expected)


def test_scaled_noise_by_hand():
    rms = math.sqrt((1 + 4 + 0) / 3)  # ||delta|| / sqrt(d)
    y = torch.tensor(Y)
    ScaledNoise(2.0).apply(y, torch.tensor(X), torch.Generator().manual_seed(7))
    z = torch.randn(3, generator=torch.Generator().manual_seed(7)).tolist()
    assert y.tolist() == pytest.approx([x + 2.0 * rms * e for x, e in zip(X, z)], rel=1e-6)


def test_attackers_are_drawn_from_the_seed():
    a = choose_attackers(6, 1 / 3, seed=0)
    assert len(a) == 2 and a == sorted(a) and set(a) <= set(range(6))
    assert choose_attackers(6, 1 / 3, seed=0) == a
    assert len({tuple(choose_attackers(100, 0.1, seed=s)) for s in range(5)}) > 1
    assert choose_attackers(6, 0.0, seed=0) == [] and choose_attackers(6, 1.0, 0) == list(range(6))
    with pytest.raises(ValueError, match="fraction"):
        choose_attackers(6, 1.5, 0)
    for bad in (0.0, -1.0, float("inf"), "x"):
        with pytest.raises(ValueError, match="scale"):
            SignFlip(bad)


class Fake(BackendBase):
    """A backend whose clients send known buffers through one shared buffer."""

    def __init__(self, rows: dict[int, list[float]]):
        self.rows, self.buf, self.loaded = rows, torch.empty(3), None

    def available_clients(self, round: int) -> list[int]:
        return list(self.rows)

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self.plan = plan

    def collect(self) -> Iterator[ClientUpdate]:
        for cid in self.plan.clients:
            self.buf.copy_(torch.tensor(self.rows[cid]))
            yield ClientUpdate(cid, self.buf, 1, {"loss": 0.5}, extras={"k": cid})

    def state_dict(self) -> dict:
        return {"fake": 1}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_attacked_clients_rewrite_only_attackers_into_their_own_buffer():
    fake = Fake({0: Y, 1: [5.0, 5.0, 5.0], 2: Y})
    be = AttackedClients(fake, SignFlip(), attackers=[0, 2], seed=3)
    x = torch.tensor(X)
    be.distribute(4, RoundPlan([0, 1, 2]), x)
    x.fill_(100.0)  # the round's global model was copied at distribute
    seen = []
    for u in be.collect():
        assert (u.params is fake.buf) == (u.client_id == 1)
        assert u.metrics == {"loss": 0.5} and u.extras == {"k": u.client_id}
        seen.append(u.params.tolist())
        assert fake.buf.tolist() == ([5.0] * 3 if u.client_id == 1 else Y)  # not ours to change
    assert seen == [[0.0, 4.0, -1.0], [5.0, 5.0, 5.0], [0.0, 4.0, -1.0]]
    assert be.available_clients(1) == [0, 1, 2] and be.state_dict() == {"fake": 1}
    be.load_state_dict({"s": 2})
    assert fake.loaded == {"s": 2} and be.rows is fake.rows  # other attributes delegate
    # noise is seeded by (seed, round, client): reproducible, different per client
    noisy = AttackedClients(fake, ScaledNoise(), attackers=[0, 2], seed=3)
    noisy.distribute(4, RoundPlan([0, 2]), torch.tensor(X))
    a, b = [u.params.clone() for u in noisy.collect()]
    z = torch.randn(3, generator=torch.Generator().manual_seed(derive_seed(3, "attack", 4, 0)))
    assert torch.allclose(a, torch.tensor(X) + math.sqrt(5 / 3) * z)
    assert not torch.equal(a, b)
    with pytest.raises(TypeError, match="label flip"):
        AttackedClients(fake, LabelFlip(), [0])


def test_label_flip_flips_the_labels_of_attackers_only():
    task = make_tiny_task()
    flipped = LabelFlip().wrap(task, attackers=[1])
    assert isinstance(flipped, type(task)) and flipped.dataset is task.dataset
    for cid in (0, 1):
        ctx = ClientContext(cid, 1, torch.Generator().manual_seed(0))
        honest = list(task.train_loader(cid, ctx))
        ctx = ClientContext(cid, 1, torch.Generator().manual_seed(0))
        got = list(flipped.train_loader(cid, ctx))
        for (x0, y0), (x1, y1) in zip(honest, got, strict=True):
            assert torch.equal(x0, x1)
            assert torch.equal(y1, 2 - y0 if cid == 1 else y0)  # 3 classes: y -> 2 - y
    five = LabelFlip(num_classes=5).wrap(task, [0])  # flips over 5 classes: y -> 4 - y
    for cid in (0, 1):
        ctx = ClientContext(cid, 1, torch.Generator().manual_seed(0))
        honest = [y for _, y in task.train_loader(cid, ctx)]
        ctx = ClientContext(cid, 1, torch.Generator().manual_seed(0))
        got = [y for _, y in five.train_loader(cid, ctx)]
        assert torch.equal(
            torch.cat(got), torch.cat(honest).neg().add(4) if cid == 0 else torch.cat(honest)
        )
    with pytest.raises(ValueError, match="num_classes"):
        LabelFlip().wrap(object.__new__(type("NoData", (), {})), [0])  # type: ignore[arg-type]
    # the vectorised engine sees an overridden train_loader and falls back to sequential
    from fedloom.simulation import VectorizedClients

    assert not VectorizedClients(flipped, 0).vectorized


def run(attack: str, aggregator=None) -> dict[str, float]:
    task, seed = make_tiny_task(), 1
    backend = InProcessClients(task, seed)
    if attack != "none":
        attackers = choose_attackers(task.num_clients, 1 / 3, seed)
        backend = AttackedClients(backend, ATTACKS[attack](10.0), attackers, seed)
    strategy = FedAvg(fraction=1.0, aggregator=aggregator)
    return Federation(task, strategy, backend, rounds=5, seed=seed).run().final_metrics


def test_sign_flippers_wreck_the_mean_and_the_median_survives():
    honest, mean, median = run("none"), run("sign_flip"), run("sign_flip", CoordinateMedian())
    assert mean["test_loss"] > 100 * honest["test_loss"]  # 2 of 6 clients at scale 10
    assert mean["test_loss"] > 100 * median["test_loss"]
    assert median["test_loss"] < 3 * honest["test_loss"]
    assert median["accuracy"] >= 0.7 > 0.4 > mean["accuracy"]  # honest: 1.0 (3 classes)


def test_attack_config_round_trip_and_wiring(tmp_path):
    cfg = Config.model_validate({"attack": {"kind": "sign_flip", "fraction": 0.5, "scale": 10}})
    assert Config.model_validate(json.loads(cfg.model_dump_json())) == cfg
    assert Config().attack == AttackConfig() and Config().attack.kind is None
    for bad in ({"kind": "bit_flip"}, {"fraction": 2.0}, {"scale": 0}, {"extra": 1}):
        with pytest.raises(ValueError, match="attack"):
            Config.model_validate({"attack": bad})
    over = run_overrides(tmp_path, **{"attack.kind": "sign_flip", "attack.fraction": 0.3})
    exp = Experiment.from_config(None, over)
    attackers = choose_attackers(10, 0.3, 0)
    assert exp.recorder.extra_report["attack"] == {
        "kind": "sign_flip",
        "fraction": 0.3,
        "scale": 1.0,
        "attackers": attackers,
    }
    assert isinstance(exp.federation.backend, AttackedClients)
    assert exp.federation.backend.attackers == frozenset(attackers)
    flip = Experiment.from_config(None, run_overrides(tmp_path, **{"attack.kind": "label_flip"}))
    flipped = set()  # the clients whose training labels are y -> 9 - y: the chosen attackers
    for cid in range(10):
        y = torch.cat(
            [y for _, y in flip.task.train_loader(cid, ClientContext(cid, 1, torch.Generator()))]
        )
        own = flip.task.dataset.train_y[flip.task.parts[cid]]
        if torch.equal(y.sort().values, (9 - own).sort().values):
            flipped.add(cid)
        else:
            assert torch.equal(y.sort().values, own.sort().values)
    assert flipped == set(choose_attackers(10, 0.2, 0)) != set()
    assert isinstance(flip.federation.backend, InProcessClients)
    with pytest.raises(ConfigError, match="simulated"):
        Experiment.from_config(None, over, backend=lambda cfg: None)
