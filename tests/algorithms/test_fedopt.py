"""Server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) against plain-float computations of
their formulas, FedAvgM(0, 1) == FedAvg bit for bit, state round trips, empty rounds,
argument checks, the registry and config, and short runs on the tiny task."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_task, resumed

from fedloom import (
    STRATEGIES,
    ClientUpdate,
    ConfigError,
    FedAvg,
    Federation,
    WeightedMean,
    load_config,
)
from fedloom.algorithms import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedloom.experiment import build_strategy

X0 = [1.0, -2.0, 0.5, 0.0]
# (client parameter vectors, sample counts) per round
ROUNDS = [
    ([[2.0, -1.0, 0.5, 0.25], [4.0, -4.0, 0.5, -0.5]], [1, 3]),
    ([[3.0, -3.0, 1.0, 0.1], [3.5, -3.5, 0.0, 0.2], [2.5, -2.5, 0.6, -0.3]], [2, 2, 1]),
    ([[3.2, -3.1, 0.55, 0.05]], [5]),
]


def stream(ws, ns, dtype=torch.float64):
    return iter(
        [ClientUpdate(i, torch.tensor(w, dtype=dtype), n) for i, (w, n) in enumerate(zip(ws, ns))]
    )


def run_rounds(strategy, rounds=ROUNDS, x0=X0, dtype=torch.float64) -> list[torch.Tensor]:
    x = torch.tensor(x0, dtype=dtype)
    out = []
    for r, (ws, ns) in enumerate(rounds, start=1):
        assert strategy.aggregate(r, x, stream(ws, ns, dtype)) is x  # in place
        out.append(x.clone())
    return out


# -- the formulas, in plain Python floats, one coordinate at a time ------------------------
def hand_mean(ws, ns) -> list[float]:
    return [sum(n * w[i] for w, n in zip(ws, ns)) / sum(ns) for i in range(len(ws[0]))]


def reference(kind: str, lr: float, b1=0.0, b2=0.0, tau=1.0, rounds=ROUNDS, branches=None):
    """x after each round: FedAvgM (b1 is the momentum) or Reddi et al.'s Algorithm 2."""
    x = list(X0)
    m = [0.0] * len(x)
    v = [0.0 if kind == "avgm" else tau * tau] * len(x)  # v_{-1} = tau^2
    out = []
    for ws, ns in rounds:
        avg = hand_mean(ws, ns)
        for i in range(len(x)):
            d = avg[i] - x[i]  # Delta = avg(x_i) - x
            if kind == "avgm":
                v[i] = b1 * v[i] + d
                x[i] += lr * v[i]
                continue
            m[i] = b1 * m[i] + (1 - b1) * d
            if kind == "adam":
                v[i] = b2 * v[i] + (1 - b2) * d * d
            elif kind == "yogi":
                sign = (v[i] > d * d) - (v[i] < d * d)
                if branches is not None and d != 0:
                    branches.add(sign)
                v[i] = v[i] - (1 - b2) * d * d * sign
            else:  # adagrad
                v[i] = v[i] + d * d
            x[i] += lr * m[i] / (math.sqrt(v[i]) + tau)
        out.append(list(x))
    return out


def assert_close(got: list[torch.Tensor], expected: list[list[float]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.tolist() == pytest.approx(e, rel=1e-12, abs=1e-12)


def test_fedavgm_by_hand() -> None:
    # beta 0.5, lr 2 on x = 0: Delta 1 -> v 1, x 2; Delta 3 - 2 = 1 -> v 1.5, x 5
    s = FedAvgM(server_lr=2.0, momentum=0.5)
    got = run_rounds(s, [([[1.0]], [1]), ([[3.0]], [4])], x0=[0.0])
    assert [g.item() for g in got] == [2.0, 5.0]


def test_fedadagrad_by_hand() -> None:
    # tau 3: v = 9 + 16 = 25, x = 0 + 4 / (5 + 3) = 0.5; then Delta 12: v 169, x += 12/16
    s = FedAdagrad(server_lr=1.0, tau=3.0)
    got = run_rounds(s, [([[4.0, -4.0]], [1]), ([[12.5, 0.0]], [2])], x0=[0.0, 0.0])
    assert got[0].tolist() == [0.5, -0.5]
    assert got[1].tolist() == pytest.approx([1.25, -0.5 + 0.5 / (math.sqrt(25.25) + 3)])


@pytest.mark.parametrize(
    "strategy, kind, hp",
    [
        (FedAvgM(server_lr=0.7, momentum=0.6), "avgm", dict(lr=0.7, b1=0.6)),
        (
            FedAdam(server_lr=0.3, beta1=0.6, beta2=0.8, tau=0.5),
            "adam",
            dict(lr=0.3, b1=0.6, b2=0.8, tau=0.5),
        ),
        (FedAdam(), "adam", dict(lr=1e-2, b1=0.9, b2=0.99, tau=1e-3)),
        (
            FedYogi(server_lr=0.3, beta1=0.6, beta2=0.5, tau=0.5),
            "yogi",
            dict(lr=0.3, b1=0.6, b2=0.5, tau=0.5),
        ),
        (FedYogi(), "yogi", dict(lr=1e-2, b1=0.9, b2=0.99, tau=1e-3)),
        (FedAdagrad(server_lr=0.4, tau=0.5), "adagrad", dict(lr=0.4, tau=0.5)),
        (FedAdagrad(server_lr=0.4, tau=0.5, beta1=0.7), "adagrad", dict(lr=0.4, b1=0.7, tau=0.5)),
        (FedAdagrad(), "adagrad", dict(lr=0.1, tau=1e-3)),
    ],
)
def test_three_rounds_match_the_formulas(strategy, kind: str, hp: dict) -> None:
    assert_close(run_rounds(strategy), reference(kind, **hp))
    assert strategy.steps == 3


def test_yogi_reference_takes_both_branches() -> None:
    branches: set[int] = set()
    reference("yogi", lr=0.3, b1=0.6, b2=0.5, tau=0.5, branches=branches)
    assert branches == {-1, 1}  # v grew on some coordinates and shrank on others


def test_unweighted_average_and_float32_state() -> None:
    s = FedAdam(server_lr=0.3, beta1=0.6, beta2=0.8, tau=0.5, weighted=False)
    ones = [(ws, [1] * len(ws)) for ws, _ in ROUNDS]
    expected = reference("adam", lr=0.3, b1=0.6, b2=0.8, tau=0.5, rounds=ones)
    assert_close(run_rounds(s), expected)
    f32 = FedAdam(server_lr=0.3, beta1=0.6, beta2=0.8, tau=0.5, aggregator=WeightedMean(True))
    got = run_rounds(f32, dtype=torch.float32)
    assert got[-1].dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in f32.state_dict()["state"].values())
    ref = reference("adam", lr=0.3, b1=0.6, b2=0.8, tau=0.5)
    assert got[-1].tolist() == pytest.approx(ref[-1], rel=1e-5, abs=1e-6)


def test_streamed_buffer_may_be_reused_after_each_update() -> None:
    shared = torch.empty(4, dtype=torch.float64)

    def reused(ws, ns):
        for cid, (w, n) in enumerate(zip(ws, ns)):
            shared.copy_(torch.tensor(w, dtype=torch.float64))
            yield ClientUpdate(cid, shared, n)
        shared.fill_(float("nan"))

    s = FedYogi(server_lr=0.3, beta1=0.6, beta2=0.5, tau=0.5)
    x = torch.tensor(X0, dtype=torch.float64)
    got = []
    for r, (ws, ns) in enumerate(ROUNDS, start=1):
        got.append(s.aggregate(r, x, reused(ws, ns)).clone())
    assert_close(got, reference("yogi", lr=0.3, b1=0.6, b2=0.5, tau=0.5))


# -- FedAvgM with no momentum and server_lr 1 is FedAvg ----------------------------------------
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("precise", [False, True])
def test_fedavgm_without_momentum_is_fedavg_bit_for_bit(weighted: bool, precise: bool) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=g)
    b = a.clone()
    avg = FedAvg(weighted=weighted, aggregator=WeightedMean(precise))
    avgm = FedAvgM(server_lr=1.0, momentum=0.0, weighted=weighted, aggregator=WeightedMean(precise))
    for r in range(1, 6):
        k = int(torch.randint(1, 5, (1,), generator=g))
        ws = [(a + torch.randn(1000, generator=g) * 10 ** float(r - 3)).tolist() for _ in range(k)]
        ns = torch.randint(1, 50, (k,), generator=g).tolist()
        avg.aggregate(r, a, stream(ws, ns, torch.float32))
        avgm.aggregate(r, b, stream(ws, ns, torch.float32))
        assert torch.equal(a, b)


def test_fedavgm_without_momentum_runs_exactly_like_fedavg() -> None:
    def run(strategy):
        return Federation(make_tiny_task(), strategy, rounds=3, seed=0).run()

    a = run(FedAvg(clients_per_round=4))
    b = run(FedAvgM(server_lr=1.0, momentum=0.0, clients_per_round=4))
    assert torch.equal(a.params, b.params)
    drop = {"seconds", "client_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in b.history
    ]


# -- state ----------------------------------------------------------------------------------
def make_all() -> list:
    return [
        FedAvgM(server_lr=0.7, momentum=0.6),
        FedAdam(server_lr=0.3, beta1=0.6, beta2=0.8, tau=0.5),
        FedYogi(server_lr=0.3, beta1=0.6, beta2=0.5, tau=0.5),
        FedAdagrad(server_lr=0.4, tau=0.5, beta1=0.3),
    ]


@pytest.mark.parametrize("index", range(4))
def test_resume_from_state_dict_is_bit_identical(index: int) -> None:
    full = run_rounds(make_all()[index])
    first = make_all()[index]
    x = run_rounds(first, ROUNDS[:2])[-1]
    state = first.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    snapshot = {k: t.clone() for k, t in state["state"].items()}
    first.aggregate(3, x.clone(), stream(*ROUNDS[2]))  # the saved state is a copy
    assert all(torch.equal(state["state"][k], t) for k, t in snapshot.items())
    second = make_all()[index]
    second.load_state_dict(loaded)
    assert second.steps == 2
    second.aggregate(3, x, stream(*ROUNDS[2]))
    assert torch.equal(x, full[-1])


@pytest.mark.parametrize("index", range(4))
def test_federation_checkpoint_resume(index: int, tmp_path: Path) -> None:
    def make(rounds: int) -> Federation:
        return Federation(make_tiny_task(), make_all()[index], rounds=rounds, seed=0)

    resumed(make, tmp_path)


def test_empty_round_changes_nothing(caplog) -> None:
    s = FedAdam(server_lr=0.3, beta1=0.6, beta2=0.8, tau=0.5)
    x = torch.tensor(X0, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        s.aggregate(1, x, iter([]))
    assert s.state_dict()["state"] == {} and s.steps == 0  # nothing allocated yet
    assert x.tolist() == X0 and "round 1" in caplog.text and "no client update" in caplog.text
    s.aggregate(2, x, stream(*ROUNDS[0]))
    before, x_before = s.state_dict(), x.clone()
    s.aggregate(3, x, iter([]))
    after = s.state_dict()
    assert torch.equal(x, x_before) and after["steps"] == before["steps"] == 1
    assert all(torch.equal(after["state"][k], t) for k, t in before["state"].items())
    for ws, ns in ROUNDS[1:]:
        s.aggregate(4, x, stream(ws, ns))
    expected = reference("adam", lr=0.3, b1=0.6, b2=0.8, tau=0.5)[-1]
    assert x.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_load_state_dict_checks_names_and_shapes() -> None:
    adam = FedAdam()
    run_rounds(adam, ROUNDS[:1])
    with pytest.raises(ValueError, match="keeps"):
        FedAvgM().load_state_dict(adam.state_dict())
    f32 = FedAdam()  # float64 state into a float32 model: converted once, on first use
    f32.load_state_dict(adam.state_dict())
    f32.aggregate(2, torch.tensor(X0), stream(*ROUNDS[1], dtype=torch.float32))
    assert all(t.dtype == torch.float32 for t in f32.state_dict()["state"].values())
    other = FedAdam()
    other.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="shape"):
        other.aggregate(2, torch.zeros(3, dtype=torch.float64), stream([[1.0, 2.0, 3.0]], [1]))


# -- arguments, registry, config ------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (FedAvgM, {"server_lr": 0.0}, "server_lr must be a finite number > 0"),
        (FedAvgM, {"server_lr": -1.0}, "server_lr"),
        (FedAdam, {"server_lr": float("nan")}, "server_lr"),
        (FedYogi, {"server_lr": float("inf")}, "server_lr"),
        (FedAvgM, {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        (FedAvgM, {"momentum": -0.1}, "momentum"),
        (FedAdam, {"beta1": 1.0}, "beta1"),
        (FedAdam, {"beta2": -0.5}, "beta2"),
        (FedAdam, {"tau": 0.0}, "tau must be a finite number > 0"),
        (FedYogi, {"tau": -1e-3}, "tau"),
        (FedYogi, {"beta2": 1.5}, "beta2"),
        (FedAdagrad, {"tau": 0.0}, "tau"),
        (FedAdagrad, {"server_lr": 0.0}, "server_lr"),
        (FedAdagrad, {"beta1": 1.0}, "beta1"),
        (FedAdam, {"clients_per_round": 0}, "clients_per_round"),
        (FedAvgM, {"fraction": 1.5}, "fraction"),
    ],
)
def test_invalid_arguments(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_registered_with_defaults_from_the_paper() -> None:
    for name, cls in [
        ("fedavgm", FedAvgM),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedadagrad", FedAdagrad),
    ]:
        assert STRATEGIES.get(name) is cls
    assert (FedAdam().beta1, FedAdam().beta2, FedAdam().tau) == (0.9, 0.99, 1e-3)
    assert (FedYogi().beta1, FedYogi().beta2, FedYogi().tau) == (0.9, 0.99, 1e-3)
    assert (FedAdagrad().server_lr, FedAdagrad().tau, FedAdagrad().beta1) == (0.1, 1e-3, 0.0)
    assert (FedAvgM().server_lr, FedAvgM().momentum) == (1.0, 0.9)
    assert FedAdam(server_lr=0.05).eta == 0.05 and "server_lr=0.05" in repr(FedAdam(0.05))


def test_build_strategy_from_config() -> None:
    cfg = load_config({"strategy": {"name": "fedadam", "options": {"server_lr": 0.01}}})
    s = build_strategy(cfg)
    assert isinstance(s, FedAdam) and s.server_lr == 0.01 and s.clients_per_round == 10
    options = {"momentum": 0.5, "aggregator": {"name": "mean", "precise": True}}
    cfg = load_config({"strategy": {"name": "fedavgm", "fraction": 0.5, "options": options}})
    s = build_strategy(cfg)
    assert isinstance(s, FedAvgM) and s.momentum == 0.5 and s.fraction == 0.5
    assert isinstance(s.aggregator, WeightedMean) and s.aggregator.precise
    with pytest.raises(ConfigError, match="tau"):
        build_strategy(load_config({"strategy": {"name": "fedyogi", "options": {"tau": 0}}}))
    with pytest.raises(ConfigError, match="not taken by fedadagrad"):
        build_strategy(load_config({"strategy": {"name": "fedadagrad", "options": {"beta2": 0.9}}}))


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy",
    [
        FedAvgM(server_lr=1.0, momentum=0.9),
        FedAdam(server_lr=0.05),
        FedYogi(server_lr=0.05),
        FedAdagrad(server_lr=0.1),
    ],
    ids=["fedavgm", "fedadam", "fedyogi", "fedadagrad"],
)
def test_three_rounds_on_the_tiny_task(strategy) -> None:
    fed = Federation(make_tiny_task(), strategy, rounds=3, seed=0)
    initial = fed.evaluate()["test_loss"]
    result = fed.run()
    assert result.rounds == 3 and bool(torch.isfinite(result.params).all())
    assert result.history[-1]["test_loss"] < initial
    assert strategy.steps == 3
