"""The shared round bookkeeping: what the loops' records count."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedloom.rounds import RoundTally, sampling_rng
from fedloom.update import ClientUpdate


def update(cid: int, n: int, loss: float, seconds: float | None = None) -> ClientUpdate:
    metrics = {"loss": loss} if seconds is None else {"loss": loss, "seconds": seconds}
    return ClientUpdate(cid, torch.zeros(1), n, metrics)


def test_counts_weight_the_loss_by_samples_and_a_rollback_voids_them():
    tally = RoundTally()
    assert math.isnan(tally.train_loss) and tally.counts()["clients"] == 0
    tally.accept(update(3, 10, 1.0, seconds=0.123456))
    tally.accept(update(5, 30, 2.0))
    tally.reject()
    assert tally.counts() == {"clients": 2, "rejected": 1, "samples": 40, "train_loss": 1.75}
    assert tally.received == 3 and tally.client_seconds == {"3": 0.1235}
    tally.void()
    assert (tally.accepted, tally.rejected, tally.samples) == (0, 3, 0)
    assert tally.seconds >= 0


def test_counted_accepts_a_stream_as_it_passes():
    tally = RoundTally()
    ids = [u.client_id for u in tally.counted(update(c, 2, 0.5) for c in range(4))]
    assert ids == [0, 1, 2, 3] and tally.samples == 8 and tally.train_loss == 0.5


def test_sampling_rng_is_one_stream_per_seed_name_and_round():
    a = sampling_rng(7, "sample", 3).integers(1 << 30, size=4)
    assert np.array_equal(a, sampling_rng(7, "sample", 3).integers(1 << 30, size=4))
    assert not np.array_equal(a, sampling_rng(7, "sample", 4).integers(1 << 30, size=4))
    assert not np.array_equal(a, sampling_rng(7, "edge/a", 3).integers(1 << 30, size=4))
