"""The privacy accountant: epsilon spent by the rounds so far, from Google's ``dp-accounting``.

Each round of central DP is one Poisson-sampled Gaussian mechanism (sampling rate q, noise
multiplier z); fedloom samples a fixed-size cohort without replacement and accounts it as
Poisson sampling at q = cohort / available, as TensorFlow Privacy, Opacus and pfl-research
do. The state is the list of ``[q, z, rounds]`` runs, plain numbers: a resumed run rebuilds
exactly the same accountant, with no pickled object in the checkpoint.

The RDP accountant (default) caches each distinct (q, z)'s RDP curve, so a round costs one
conversion to (epsilon, delta), well under a millisecond. The PLD accountant is tighter
(nearly exact: within 1% of the analytic Gaussian mechanism) and slower: it recomposes the
whole run at each new state (tens to hundreds of ms; the last two results are kept, so the
look-ahead of one round is the next round's record for free).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

Method = Literal["rdp", "pld"]
PLD_INTERVAL = 1e-3  # the PLD's loss discretisation: epsilon to ~1e-4, 10x faster than 1e-4


@contextmanager
def quiet_absl() -> Iterator[None]:
    """At large q the library drops the fractional RDP orders it cannot evaluate (the bound
    stays valid) and logs a warning per order and per call: quieted while it computes."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def pld_accountant() -> pld.PLDAccountant:
    return pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)


def check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def check_rate(name: str, q: float) -> float:
    if isinstance(q, bool) or not (isinstance(q, int | float) and 0 < q <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {q!r}")
    return float(q)


def check_noise(name: str, z: float) -> float:
    if isinstance(z, bool) or not (isinstance(z, int | float) and 0 <= z < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {z!r}")
    return float(z)


def merged(runs: list[list[float]]) -> tuple[tuple[float, float, int], ...]:
    """``runs`` with empty ones dropped and neighbours of equal (q, z) joined: one key for
    one history, however it was stepped."""
    out: list[tuple[float, float, int]] = []
    for q, z, n in runs:
        if n <= 0:
            continue
        if out and out[-1][:2] == (q, z):
            out[-1] = (q, z, out[-1][2] + int(n))
        else:
            out.append((float(q), float(z), int(n)))
    return tuple(out)


def round_event(q: float, z: float) -> dp_accounting.DpEvent:
    """One round: the Gaussian mechanism with multiplier ``z`` on a Poisson sample at ``q``."""
    gaussian = dp_accounting.GaussianDpEvent(z)
    return gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


class Accountant:
    """Epsilon at ``delta`` after the rounds :meth:`step` recorded.

    Args:
        delta: the delta of the reported (epsilon, delta) guarantee, in (0, 1).
        method: ``"rdp"`` (Renyi DP, fast, a little loose) or ``"pld"`` (privacy loss
            distributions, tighter, slower).
    """

    def __init__(self, delta: float, method: Method = "rdp"):
        if method not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {method!r}")
        self.delta = check_delta(delta)
        self.method: Method = method
        self._runs: list[list[float]] = []  # [q, z, rounds]
        self._curves: dict[tuple[float, float], np.ndarray] = {}
        self._memo: dict[tuple[tuple[float, float, int], ...], float] = {}

    @property
    def rounds(self) -> int:
        return int(sum(r[2] for r in self._runs))

    def step(self, q: float, z: float, rounds: int = 1) -> None:
        """Record ``rounds`` rounds at sampling rate ``q`` and noise multiplier ``z``."""
        q, z = check_rate("sampling rate", q), check_noise("noise_multiplier", z)
        if self._runs and self._runs[-1][:2] == [q, z]:
            self._runs[-1][2] += rounds
        else:
            self._runs.append([q, z, rounds])

    def epsilon(self, extra: tuple[float, float, int] | None = None) -> float:
        """Epsilon spent so far (plus ``extra`` = (q, z, rounds) not yet taken, to look
        ahead); 0 before any round, inf when a round had no noise."""
        runs = [*self._runs, *([list(extra)] if extra else [])]
        key = merged(runs)
        if not key:
            return 0.0
        if any(z == 0 for _, z, _ in key):
            return math.inf
        if key not in self._memo:
            if len(self._memo) >= 2:  # keep the last two: this round's and the look-ahead
                del self._memo[next(iter(self._memo))]
            self._memo[key] = self._compute(key)
        return self._memo[key]

    def _compute(self, runs: tuple[tuple[float, float, int], ...]) -> float:
        if self.method == "pld":
            acc = pld_accountant()
            for q, z, n in runs:
                acc.compose(round_event(q, z), n)
            return float(acc.get_epsilon(self.delta))
        total = sum(n * self._curve(q, z) for q, z, n in runs)
        eps, _ = rdp.rdp_privacy_accountant.compute_epsilon(self._orders, total, self.delta)
        return float(eps)

    @property
    def _orders(self) -> np.ndarray:
        return np.asarray(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)

    def _curve(self, q: float, z: float) -> np.ndarray:
        """One round's RDP at every order, computed once per (q, z)."""
        if (q, z) not in self._curves:
            with quiet_absl():
                acc = rdp.RdpAccountant(list(self._orders)).compose(round_event(q, z))
            self._curves[(q, z)] = np.array(acc.rdp, dtype=np.float64)
        return self._curves[(q, z)]

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "method": self.method, "runs": [list(r) for r in self._runs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("delta", self.delta) != self.delta:
            raise ValueError(f"the state was accounted at delta {state['delta']}, not {self.delta}")
        self._runs = [[float(q), float(z), int(n)] for q, z, n in state.get("runs", [])]

    def __repr__(self) -> str:
        return f"Accountant(delta={self.delta}, method={self.method!r}, rounds={self.rounds})"


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float,
    method: Method = "rdp",
    tol: float = 1e-4,
) -> float:
    """The smallest noise multiplier z (within ``tol``) whose ``rounds`` rounds at
    ``sampling_rate`` spend at most ``target_epsilon`` at ``delta`` (dp-accounting's
    Brent search over the same accountant the run uses)."""
    if isinstance(target_epsilon, bool) or not (
        isinstance(target_epsilon, int | float) and 0 < target_epsilon < math.inf
    ):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    delta, q = check_delta(delta), check_rate("sampling_rate", sampling_rate)

    def fresh() -> dp_accounting.PrivacyAccountant:
        return rdp.RdpAccountant() if method == "rdp" else pld_accountant()

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(round_event(q, z), rounds)

    with quiet_absl():
        z = dp_accounting.calibrate_dp_mechanism(
            fresh,
            event,
            float(target_epsilon),
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=tol,
        )
    # the search returns a point within tol of the optimum; step up to the safe side
    acc = Accountant(delta, method)
    acc.step(q, float(z), rounds)
    while acc.epsilon() > target_epsilon:
        z += tol
        acc = Accountant(delta, method)
        acc.step(q, float(z), rounds)
    return float(z)


def budget_stop(
    accountant: Accountant, q: float | None, z: float, target_epsilon: float | None, delta: float
) -> str | None:
    """Why the run must stop before its next round: one more round at sampling rate ``q`` and
    noise multiplier ``z`` would spend more than ``target_epsilon``; None while it would not."""
    if target_epsilon is None or q is None:
        return None
    ahead = accountant.epsilon((q, z, 1))
    if ahead <= target_epsilon:
        return None
    return (
        f"privacy budget: one more round would spend epsilon {ahead:.4g} > "
        f"privacy.target_epsilon = {target_epsilon:g} (delta {delta:g}); "
        f"stopped at epsilon {accountant.epsilon():.4g} after "
        f"{accountant.rounds} noised rounds"
    )
