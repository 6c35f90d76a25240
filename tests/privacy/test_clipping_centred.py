"""Adaptive clipping's count is centred (b - 1/2 per client), as the accounting assumes: a
client joining or leaving moves the released count by 1/2, so the clip's move with
dropouts is the centred estimator's, not the raw share's."""

from __future__ import annotations

import math

from fedloom.privacy import AdaptiveClip


def test_the_count_is_centred_so_one_client_moves_it_by_a_half():
    clip = AdaptiveClip(1.0, target_quantile=0.5, learning_rate=1.0)
    clip.begin()
    for norm in (0.1, 0.2, 0.3, 0.4):  # 4 of a planned 10 arrived, all under C
        clip.observe(norm)
    clip.update(cohort=10, noise=0.0)
    # centred: (4 * 1/2) / 10 + 1/2 = 0.7 (the raw share would be 0.4, and C would grow)
    assert math.isclose(clip.clip_norm, math.exp(-(0.7 - 0.5)), rel_tol=1e-12)

    full = AdaptiveClip(1.0, target_quantile=0.5, learning_rate=1.0)
    full.begin()
    for norm in (0.1, 0.2, 5.0, 6.0):  # the whole cohort: centred equals the raw share
        full.observe(norm)
    full.update(cohort=4, noise=0.0)
    assert math.isclose(full.clip_norm, 1.0, rel_tol=1e-12)

