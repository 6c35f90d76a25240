"""Central DP with secure aggregation: the noise covers the fixed-point rounding.

SecAgg+ rounds each clipped delta stochastically to its grid, so a client's contribution to
the sum can be longer than C (by up to sqrt(d) * step); the central stage then noises with
std z * (C + sqrt(d) * step), the sensitivity that is really left.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_overrides

import fedloom
from fedloom.privacy import CentralDP, Staged
from fedloom.privacy.secagg import SecAggConfig
from fedloom.privacy.secagg.quantize import dequantize, quantize
from fedloom.strategies import FedAvg


def noised_sum(stage: CentralDP, n: int) -> torch.Tensor:
    """The stage's noise on a zero sum of ``n`` values (round 1 of a run seeded 0)."""
    s = Staged(FedAvg(clients_per_round=4), [stage])
    s.start(0)
    s.configure(1, list(range(40)), np.random.default_rng(0))
    return stage.process_aggregate(1, torch.zeros(n), 4)


def test_rounding_lengthens_a_clipped_delta_by_at_most_sqrt_d_steps():
    """On a coarse grid (5 levels in [-C, C]) a delta of norm exactly C comes out longer
    than C in some draws (the unaccounted excess), never longer than C + sqrt(d) step."""
    clip, d = 1.0, 64
    cfg = SecAggConfig(2, d, 2, 2, clipping_range=clip, quantization_range=5)
    rng = np.random.default_rng(0)
    delta = rng.normal(size=d)
    delta *= clip / np.linalg.norm(delta)
    norms = [
        float(np.linalg.norm(dequantize(quantize(delta, cfg, rng), 1, cfg)))
        for _ in range(200)
    ]
    assert max(norms) > clip
    assert max(norms) <= clip + math.sqrt(d) * cfg.step


def test_the_noise_std_is_z_times_the_clip_plus_the_rounding():
    """n draws: the sample variance has relative std sqrt(2 / n) = 0.0022; 5 of them."""
    z, clip, step, n = 1.3, 0.4, 1e-3, 400_000
    stage = CentralDP(z, clip, rounding_step=step)
    noise = noised_sum(stage, n).double()
    sigma = z * (clip + math.sqrt(n) * step)
    assert abs(float(noise.var()) / sigma**2 - 1) < 5 * math.sqrt(2 / n)
    assert stage.round_record()["sensitivity"] == pytest.approx(clip + math.sqrt(n) * step)
    with pytest.raises(ValueError, match="rounding_step"):
        CentralDP(1.0, rounding_step=float("inf"))


def test_the_config_passes_secure_aggregations_step_to_central_dp(tmp_path: Path):
    keys = {
        "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.5,
        "privacy.secure_aggregation": True, "privacy.quantization_range": 1025, "rounds": 1,
    }  # fmt: skip
    exp = fedloom.Experiment.from_config(None, run_overrides(tmp_path, "sa", **keys))
    central, _ = exp.federation.strategy.stages  # type: ignore[attr-defined]
    assert isinstance(central, CentralDP)
    step = 2 * 0.5 / 1024
    assert central.rounding_step == step
    d = exp.federation.params.numel()
    record = exp.run().history[-1]
    assert record["sensitivity"] == pytest.approx(0.5 + math.sqrt(d) * step)
    assert torch.isfinite(exp.federation.params).all()
