"""Clipping: the bound holds for every update, unclipped updates pass unchanged, and adaptive
clipping moves C toward the target quantile of the update norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom import FedAvg
from fedloom.privacy import AdaptiveClip, CentralDP, Staged, clip_
from fedloom.update import ClientUpdate

NORMS = [0.0, 1e-3, 0.5, 0.999, 1.0, 1.001, 3.0, 1e3, 1e8]


def direction(n: int, seed: int) -> torch.Tensor:
    d = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (d / torch.linalg.vector_norm(d)).float()


@pytest.mark.parametrize("norm", NORMS)
def test_clip_bounds_the_norm_and_keeps_the_direction(norm: float):
    d = direction(1000, int(norm * 7) % 97) * norm
    original = d.clone()
    before = clip_(d, 1.0)
    assert before == pytest.approx(float(torch.linalg.vector_norm(original.double())), rel=1e-6)
    after = float(torch.linalg.vector_norm(d.double()))
    assert after <= 1.0 * (1 + 1e-6)
    if before <= 1.0:
        assert torch.equal(d, original)
    else:
        assert after == pytest.approx(1.0, rel=1e-6)
        assert torch.allclose(d * before, original, rtol=1e-5, atol=1e-6 * norm)


def staged(stage: CentralDP, clients: int) -> Staged:
    s = Staged(FedAvg(clients_per_round=clients), [stage])
    s.start(0)
    return s


def test_the_stage_clips_every_update_delta_and_averages_them():
    """With no noise the round's step is the mean of the clipped deltas, and every update the
    stage passes on is within C of the global model."""
    clip, n = 0.7, 500
    g = torch.randn(n, generator=torch.Generator().manual_seed(1))
    deltas = [direction(n, i) * norm for i, norm in enumerate(NORMS)]
    stage = CentralDP(0.0, clip)
    s = staged(stage, len(deltas))
    s.configure(1, list(range(len(deltas))), np.random.default_rng(0))
    for i, d in enumerate(deltas):
        out = stage.process_update(1, ClientUpdate(i, g + d, 10), g)
        assert float(torch.linalg.vector_norm((out.params - g).double())) <= clip * (1 + 1e-5)
    params = g.clone()
    s.aggregate(1, params, [ClientUpdate(i, g + d, 10 * (i + 1)) for i, d in enumerate(deltas)])
    expect = torch.stack([d * min(1.0, clip / max(float(d.norm()), 1e-30)) for d in deltas])
    assert torch.allclose(params - g, expect.mean(0), atol=1e-5)  # uniform, not by samples


def test_adaptive_clipping_moves_c_toward_the_target_quantile():
    """Ten clients with norms 1..10 each round, target median: C climbs from 0.1 and falls
    from 100 into the norms' middle, where half the updates are unclipped."""
    n = 50
    g = torch.zeros(n)
    updates = [ClientUpdate(i, direction(n, i) * (i + 1), 1) for i in range(10)]
    for start in (0.1, 100.0):
        stage = CentralDP(
            0.5, start, target_quantile=0.5, clip_learning_rate=0.3, clip_count_stddev=0.5
        )
        s = staged(stage, 10)
        seen = [stage.current_clip_norm]
        for rnd in range(1, 81):
            s.configure(rnd, list(range(10)), np.random.default_rng(rnd))
            s.aggregate(rnd, g.clone(), updates)
            seen.append(stage.current_clip_norm)
        assert (seen[10] > seen[0]) if start < 1 else (seen[10] < seen[0])
        late = np.mean(seen[60:])
        assert 4.5 <= late <= 7.0, seen  # the median of 1..10 lies in (5, 6]


def test_adaptive_clip_update_is_the_papers_geometric_step():
    clip = AdaptiveClip(2.0, 0.8, learning_rate=0.2, count_stddev=1.0)
    clip.begin()
    for norm in (1.0, 1.5, 3.0, 4.0):  # 2 of 4 within C = 2
        clip.observe(norm)
    clip.update(cohort=4, noise=0.4)  # b = (2 + 0.4 * 1.0) / 4 = 0.6
    assert clip.clip_norm == pytest.approx(2.0 * np.exp(-0.2 * (0.6 - 0.8)))


def test_adaptive_clipping_accounts_the_count_noise():
    """The update noise is the share left once the count's noise is paid for: together they
    cost one Gaussian at the configured noise multiplier (Andrew et al., Theorem 1)."""
    clip = AdaptiveClip(1.0, 0.5, count_stddev=2.0)
    z_delta = clip.delta_noise_multiplier(1.0, cohort=100)
    assert z_delta**-2 + (2 * 2.0) ** -2 == pytest.approx(1.0)
    assert z_delta > 1.0
    with pytest.raises(ValueError, match="clip_count_stddev"):
        AdaptiveClip(1.0, 0.5, count_stddev=0.4).delta_noise_multiplier(1.0, cohort=100)
    assert AdaptiveClip(1.0, 0.5).stddev(cohort=100) == 5.0  # the paper's cohort / 20
