"""SecAgg+ rounds in one process: the sum is exact, no single vector leaks, dropouts survive.

A sum of m clients' dequantised inputs is within ``m * step`` of the true sum of their
(clipped) inputs, ``step = 2 c / (L - 1)``: stochastic rounding moves each coordinate of
each client by less than one level.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.privacy.secagg import (
    ClientMessage,
    Dropouts,
    MaskedInput,
    SecAggAbort,
    SecAggConfig,
    SecAggServer,
    SimulatedRound,
    UnmaskShares,
    shamir,
    simulate_round,
)
from fedloom.privacy.secagg.graph import neighbours
from fedloom.privacy.secagg.prg import mask

SEED = b"secagg test seed"


def updates(n: int, d: int, seed: int = 0, scale: float = 0.8) -> list[NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale / 3, d).clip(-scale, scale) for _ in range(n)]


def quantized_sum(run: SimulatedRound, ups: list[NDArray[np.float64]]) -> NDArray[np.uint64]:
    assert run.result is not None
    total = sum(run.clients[i].quantize(ups[i]).astype(np.uint64) for i in run.result.survivors)
    return np.asarray(total, dtype=np.uint64) % run.server.config.modulus


def check_sum(run: SimulatedRound, ups: list[NDArray[np.float64]], survivors: set[int]) -> None:
    result, cfg = run.result, run.server.config
    assert result is not None and set(result.survivors) == survivors
    # exact: the unmasked sum is the integer sum of the survivors' quantised inputs
    assert np.array_equal(result.quantized_sum.astype(np.uint64), quantized_sum(run, ups))
    plain = np.sum([ups[i] for i in survivors], axis=0)
    bound = len(survivors) * cfg.step
    assert np.abs(result.total - plain).max() < bound


def config(n: int = 20, d: int = 1000, k: int = 11, t: int = 6, **kw: int) -> SecAggConfig:
    return SecAggConfig(num_clients=n, vector_length=d, num_shares=k,
                        reconstruction_threshold=t, clipping_range=1.0, **kw)  # fmt: skip


def test_sum_equals_the_plaintext_sum_of_the_quantised_inputs() -> None:
    cfg = config(quantization_range=2**20)
    ups = updates(20, 1000)
    run = simulate_round(cfg, ups, SEED)
    check_sum(run, ups, set(range(20)))
    assert run.server.refused.total() == 0
    assert all(c.refused.total() == 0 for c in run.clients)


def test_clipping_range_bounds_each_input() -> None:
    cfg = config(n=5, k=5, t=3)
    ups = [np.full(1000, 3.0), *updates(4, 1000)]  # client 0 far outside [-1, 1]
    run = simulate_round(cfg, ups, SEED)
    assert run.result is not None
    clipped = np.sum([np.clip(u, -1, 1) for u in ups], axis=0)
    assert np.abs(run.result.total - clipped).max() < 5 * cfg.step


class CuriousServer(SecAggServer):
    """An honest-but-curious aggregator: keeps a copy of every vector and share it receives."""

    def __init__(self, cfg: SecAggConfig):
        super().__init__(cfg)
        self.seen: list[NDArray[np.uint32]] = []
        self.inputs: dict[int, NDArray[np.uint32]] = {}
        self.seed_shares: dict[int, dict[int, bytes]] = {}  # owner -> {x: share}

    def receive(self, message: ClientMessage) -> None:
        super().receive(message)
        if isinstance(message, MaskedInput):
            self.seen.append(np.array(message.vector))
            self.inputs[message.sender] = self.seen[-1]
        if isinstance(message, UnmaskShares):
            for owner, share in message.seed_shares:
                self.seed_shares.setdefault(owner, {})[message.sender + 1] = share

    def without_self_masks(self) -> dict[int, NDArray[np.uint32]]:
        """What it can compute after the round: each input less its (revealed) self-mask."""
        t, d = self.config.reconstruction_threshold, self.config.vector_length
        return {
            i: v - mask(shamir.combine(self.seed_shares[i], t), d) for i, v in self.inputs.items()
        }


def test_a_curious_server_never_holds_a_vector_correlated_with_one_client() -> None:
    """With d = 20,000 the correlation of two independent vectors has std 1/sqrt(d) = 0.0071:
    0.05 is 7 standard deviations, so 400 pairs all stay below it unless something leaks
    (an unmasked input has correlation > 0.99 with the update: checked too). It also holds the
    survivors' self-mask seeds after the round; without their self-masks, the inputs are
    still hidden by the pairwise masks."""
    n, d = 20, 20_000
    cfg = config(n=n, d=d)
    ups = updates(n, d, seed=1)
    server = CuriousServer(cfg)
    run = simulate_round(cfg, ups, SEED, server=server)
    check_sum(run, ups, set(range(n)))
    assert len(server.seen) == n
    for vector in server.seen:
        for i in range(n):
            assert abs(np.corrcoef(vector.astype(np.float64), ups[i])[0, 1]) < 0.05
    # the self-masks are revealed at the unmask stage: the pairwise masks still hide each input
    for vector in server.without_self_masks().values():
        for i in range(n):
            assert abs(np.corrcoef(vector.astype(np.float64), ups[i])[0, 1]) < 0.05
    quantized = run.clients[0].quantize(ups[0]).astype(np.float64)
    assert np.corrcoef(quantized, ups[0])[0, 1] > 0.99  # what an unmasked upload would leak


def _pick(rng: np.random.Generator, pool: set[int], k: int) -> frozenset[int]:
    return frozenset(int(i) for i in rng.choice(sorted(pool), k, replace=False))


@pytest.mark.parametrize(
    "stage", ["before_advertise", "after_advertise", "after_share_keys", "after_masked_input"]
)
def test_five_of_twenty_drop_at_one_stage(stage: str) -> None:
    """k = 11, t = 6: any 5 dropouts leave every secret at least 6 share holders."""
    cfg, ups = config(), updates(20, 1000, seed=2)
    gone = _pick(np.random.default_rng(3), set(range(20)), 5)
    run = simulate_round(cfg, ups, SEED, Dropouts(**{stage: gone}))
    # survivors, per the paper: the clients whose masked input arrived
    survivors = set(range(20)) - (gone if stage != "after_masked_input" else frozenset())
    check_sum(run, ups, survivors)


def five_at_each_stage() -> Dropouts:
    rng = np.random.default_rng(4)
    left = set(range(20))
    sets = []
    for _ in range(3):
        sets.append(_pick(rng, left, 5))
        left -= sets[-1]
    return Dropouts(after_advertise=sets[0], after_share_keys=sets[1], after_masked_input=sets[2])


def test_five_of_twenty_drop_at_each_stage_in_one_round() -> None:
    """Complete graph, t = 5: 15 of 20 drop (5 per stage); 5 answer the unmask stage, which
    is enough; the sum is that of the 10 whose masked inputs arrived."""
    cfg, ups = config(k=20, t=5), updates(20, 1000, seed=5)
    drops = five_at_each_stage()
    run = simulate_round(cfg, ups, SEED, drops)
    check_sum(run, ups, set(range(20)) - drops.after_advertise - drops.after_share_keys)


def test_more_dropouts_than_the_threshold_allows_abort_and_the_next_round_runs() -> None:
    cfg, ups = config(), updates(20, 1000, seed=5)  # t = 6: 5 unmask answers are too few
    with pytest.raises(SecAggAbort, match="round 0 aborted at unmask: 5 clients answered, "
                       "threshold 6"):  # fmt: skip
        simulate_round(cfg, ups, SEED, five_at_each_stage())
    early = Dropouts(before_advertise=frozenset(range(15)))
    with pytest.raises(SecAggAbort, match="aborted at advertise: 5 clients answered"):
        simulate_round(cfg, ups, SEED, early)
    next_round = config(round=1)
    check_sum(simulate_round(next_round, ups, SEED), ups, set(range(20)))


def test_dropout_that_leaves_one_secret_short_of_shares_aborts_naming_it() -> None:
    """Ring graph with k = 3, t = 3: a survivor's seed needs both its neighbours."""
    cfg, ups = config(n=10, d=100, k=3, t=3), updates(10, 100)
    run = simulate_round(cfg, ups, SEED)
    check_sum(run, ups, set(range(10)))
    victim = min(neighbours(10, 3, 0)[0])
    with pytest.raises(SecAggAbort, match=r"2 seed shares of client \d+ arrived, 3 needed"):
        simulate_round(cfg, ups, SEED, Dropouts(after_masked_input=frozenset({victim})))


def test_same_seed_same_masked_vectors_and_output() -> None:
    cfg, ups = config(d=2000), updates(20, 2000, seed=6)
    runs = []
    for seed in (SEED, SEED, b"another seed"):
        server = CuriousServer(cfg)
        run = simulate_round(cfg, ups, seed, Dropouts(after_share_keys=frozenset({3})),
                             server=server)  # fmt: skip
        assert run.result is not None
        runs.append((server.seen, run.result.quantized_sum))
    (seen_a, sum_a), (seen_b, sum_b), (seen_c, _) = runs
    assert all(np.array_equal(a, b) for a, b in zip(seen_a, seen_b, strict=True))
    assert np.array_equal(sum_a, sum_b)
    assert not any(np.array_equal(a, c) for a, c in zip(seen_a, seen_c, strict=True))
