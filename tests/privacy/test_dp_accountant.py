"""The accountant against independent computations: the analytic Gaussian mechanism (Balle &
Wang 2018) and the Gaussian's closed-form RDP, implemented here; calibration; its state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedloom.privacy import Accountant, calibrate_noise_multiplier

GAUSSIANS = [(1.0, 1, 1e-5), (2.0, 10, 1e-5), (5.0, 100, 1e-6)]  # (z, rounds, delta) at q = 1
TARGETS = [(2.0, 100, 0.01), (8.0, 50, 0.1), (1.0, 10, 1.0)]  # (epsilon, rounds, q)


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact epsilon of the Gaussian mechanism (sensitivity 1, std ``sigma``) at
    ``delta``: Balle & Wang 2018, Theorem 8, delta(eps) = Phi(1/(2s) - eps s) - e^eps
    Phi(-1/(2s) - eps s), which falls in eps; solved by bisection."""

    def delta_at(eps: float) -> float:
        half = 1 / (2 * sigma)
        return phi(half - eps * sigma) - math.exp(eps) * phi(-half - eps * sigma)

    lo, hi = 0.0, 1.0
    while delta_at(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_at(mid) > delta else (lo, mid)
    return hi


def rdp_gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """Epsilon from the Gaussian's RDP, rounds * alpha / (2 sigma^2) (Mironov 2017), converted
    by Canonne, Kamath & Steinke 2020 (Prop. 12), minimised over a fine grid of orders."""
    alphas = np.linspace(1.02, 1100, 400_000)
    rdp = rounds * alphas / (2 * sigma**2)
    eps = rdp + np.log1p(-1 / alphas) - np.log(delta * alphas) / (alphas - 1)
    return float(eps.min())


@pytest.mark.parametrize(("z", "rounds", "delta"), GAUSSIANS)
def test_pld_epsilon_equals_the_analytic_gaussian_mechanism(z: float, rounds: int, delta: float):
    # q = 1: `rounds` Gaussian mechanisms compose exactly to one with std z / sqrt(rounds)
    acc = Accountant(delta, "pld")
    acc.step(1.0, z, rounds)
    exact = analytic_gaussian_epsilon(z / math.sqrt(rounds), delta)
    assert acc.epsilon() == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize(("z", "rounds", "delta"), GAUSSIANS)
def test_rdp_epsilon_equals_the_closed_form_and_bounds_the_exact_one(
    z: float, rounds: int, delta: float
):
    acc = Accountant(delta, "rdp")
    for _ in range(rounds):  # one step per round, as a run records them
        acc.step(1.0, z)
    assert acc.epsilon() == pytest.approx(rdp_gaussian_epsilon(z, rounds, delta), rel=0.01)
    assert acc.epsilon() >= analytic_gaussian_epsilon(z / math.sqrt(rounds), delta)


def test_subsampled_rdp_bounds_pld_and_both_grow_with_rounds():
    rdp, pld = Accountant(1e-5, "rdp"), Accountant(1e-5, "pld")
    before = []
    for acc in (rdp, pld):
        acc.step(0.05, 1.1, 50)
        before.append(acc.epsilon())
        acc.step(0.05, 1.1, 50)
    assert 0 < before[1] <= before[0]
    assert pld.epsilon() <= rdp.epsilon()
    assert rdp.epsilon() > before[0] and pld.epsilon() > before[1]


def test_epsilon_is_zero_before_a_round_and_infinite_without_noise():
    acc = Accountant(1e-5)
    assert acc.epsilon() == 0.0
    assert acc.epsilon((0.1, 1.0, 1)) > 0
    acc.step(0.1, 0.0)
    assert acc.epsilon() == math.inf


def test_look_ahead_equals_taking_the_round():
    acc = Accountant(1e-5)
    acc.step(0.1, 1.0, 7)
    ahead = acc.epsilon((0.1, 1.0, 1))
    acc.step(0.1, 1.0)
    assert acc.epsilon() == ahead and acc.rounds == 8


def test_state_round_trip_is_exact_and_plain():
    acc = Accountant(1e-5)
    acc.step(0.1, 1.0, 3)
    acc.step(0.2, 1.0)
    acc.step(0.2, 1.0)
    state = acc.state_dict()
    assert state["runs"] == [[0.1, 1.0, 3], [0.2, 1.0, 2]]
    fresh = Accountant(1e-5)
    fresh.load_state_dict(state)
    assert fresh.epsilon() == acc.epsilon() and fresh.rounds == 5
    with pytest.raises(ValueError, match="delta"):
        Accountant(1e-6).load_state_dict(state)


@pytest.mark.parametrize(("target", "rounds", "q"), TARGETS)
def test_calibration_meets_the_target_within_tolerance(target: float, rounds: int, q: float):
    z = calibrate_noise_multiplier(target, 1e-5, rounds, q)
    acc = Accountant(1e-5)
    acc.step(q, z, rounds)
    assert target * 0.99 <= acc.epsilon() <= target
    less = Accountant(1e-5)
    less.step(q, z * 0.98, rounds)  # any less noise overspends
    assert less.epsilon() > target


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_epsilon": 0}, "target_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"rounds": 0}, "rounds"),
        ({"sampling_rate": 0}, "sampling_rate"),
    ],
)
def test_calibration_refuses_bad_arguments(kwargs, name):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "rounds": 10, "sampling_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        calibrate_noise_multiplier(**args)


def test_accountant_refuses_bad_arguments():
    with pytest.raises(ValueError, match="delta"):
        Accountant(0.0)
    with pytest.raises(ValueError, match="accountant"):
        Accountant(1e-5, "prv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_multiplier"):
        Accountant(1e-5).step(0.1, -1.0)
