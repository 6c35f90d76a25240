"""FedProx's Synthetic(alpha, beta): heterogeneity you can dial in, generated, never downloaded.

Follows litian96/FedProx ``data/synthetic_*/generate_synthetic.py`` (Li et al., MLSys 2020):
``alpha`` controls how much the clients' models differ, ``beta`` how much their inputs differ.
As in that code, alpha and beta are the standard deviations passed to ``normal`` (the paper
writes N(0, alpha)). A ``numpy`` Generator seeded by ``seed`` makes every draw reproducible.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import register_dataset
from .base import TensorDataset


@register_dataset("synthetic")
def load_synthetic(
    root: str | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 30,
    iid: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
    dim: int = 60,
    num_classes: int = 10,
) -> TensorDataset:
    """Synthetic(alpha, beta) with one natural client per generator, float32 ``(N, dim)`` inputs.

    ``root`` is accepted for the common loader signature and ignored. ``iid=True`` is the
    reference's Synthetic-IID: one shared ``W, b`` drawn from N(0, 1) and zero input means.
    Each client's samples are shuffled and the last ``ceil(test_fraction * n)`` go to the
    test set (the reference keeps 10%); ``natural_partition`` indexes each client's train part.
    """
    if num_clients < 1 or dim < 1 or num_classes < 2:
        raise ConfigError(
            f"synthetic: need num_clients >= 1, dim >= 1, num_classes >= 2; "
            f"got {num_clients}, {dim}, {num_classes}"
        )
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"synthetic: test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_clients).astype(np.int64) + 50
    sigma = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma_jj = j^-1.2
    if iid:
        shared_w = rng.normal(0, 1, (dim, num_classes))
        shared_b = rng.normal(0, 1, num_classes)
        mean_x = np.zeros((num_clients, dim))
    else:
        mean_w = rng.normal(0, alpha, num_clients)  # u_k, also the mean of b_k
        big_b = rng.normal(0, beta, num_clients)  # B_k
        mean_x = np.stack([rng.normal(big_b[k], 1, dim) for k in range(num_clients)])  # v_k
    parts: list[tuple[np.ndarray, np.ndarray, int]] = []
    test_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(num_clients):
        if iid:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(mean_w[k], 1, (dim, num_classes))
            b = rng.normal(mean_w[k], 1, num_classes)
        x = mean_x[k] + rng.standard_normal((int(sizes[k]), dim)) * sigma
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone, so argmax of the logits
        order = rng.permutation(len(y))
        n_test = math.ceil(test_fraction * len(y) - 1e-9)
        n_train = len(y) - n_test
        parts.append((x[order[:n_train]], y[order[:n_train]], n_train))
        test_parts.append((x[order[n_train:]], y[order[n_train:]]))
    bounds = np.cumsum([0] + [n for _, _, n in parts])

    def tensors(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate(xs).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.concatenate(ys).astype(np.int64))

    train_x, train_y = tensors([p[0] for p in parts], [p[1] for p in parts])
    test_x, test_y = tensors([p[0] for p in test_parts], [p[1] for p in test_parts])
    return TensorDataset(
        name="synthetic",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        natural_partition=[torch.arange(int(a), int(b)) for a, b in itertools.pairwise(bounds)],
        meta={
            "alpha": alpha,
            "beta": beta,
            "iid": iid,
            "seed": seed,
            "dim": dim,
            "test_fraction": test_fraction,
            "samples_per_client": sizes.tolist(),
        },
    )
