"""``simulation.threads``: torch's intra-op thread count, the same in every process of a run.

How many threads split a matrix product changes how its float sums are grouped, so two
processes with different counts train (slightly) different models from the same seed. torch
picks its count from the machine (all cores) or ``OMP_NUM_THREADS``, which torchrun sets to 1;
so ``fedloom run``, ``--processes N`` and ``torchrun`` would disagree. Every process of a
config-driven run (the simulation, each pool worker, each torchrun rank, the aggregator, each
client and relay) applies the config's count before it builds the task, which makes them
bit-identical whatever the machine or environment says. The default, 1, is what the pool's
workers and torchrun's ranks want anyway (they already split the work across cores); a large
model trained in one process may run faster with more, at the price of a different model from
a run with another count (set the same value everywhere to compare runs).
"""

from __future__ import annotations

import torch

from ..config import Config


def apply_threads(cfg: Config) -> None:
    """Set this process's torch intra-op threads to ``simulation.threads``."""
    if torch.get_num_threads() != cfg.simulation.threads:
        torch.set_num_threads(cfg.simulation.threads)
