"""train.precision on the CPU: bf16 autocast in the sequential and vectorised engines (and
fp16 with its gradient scaler in the sequential one); the global model stays float32.

The tolerances: bf16 keeps 8 bits of mantissa, so every autocast matmul's output is off by
up to 2^-9 (0.2%) relative. Over a short run those errors move the trained parameters by a
small relative amount (measured 8e-3 here, where the two engines in fp32 agree to 1e-7)
and, at most, flip test points whose top two logits lie within it. The accuracy of the
bf16 model must therefore stay within the test set's own sampling noise of the fp32
model's: 2 standard errors of an accuracy near 0.85 on 1,000 test samples,
2 * sqrt(0.85 * 0.15 / 1000) = 0.023. The parameters must differ at all (autocast really
ran) yet by under 2% relative, and the mean test loss by under 2%.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from conftest import make_tiny_task

import fedloom
from fedloom import ClassificationTask, FedAvg, Federation
from fedloom.data import IID
from fedloom.simulation.vectorized import VectorizedClients

torch.set_num_threads(1)

SEED = 5
ACC_TOL = 2 * (0.85 * 0.15 / 1000) ** 0.5  # 0.023: see the module doc
REL_TOL = 0.02


def mnist_task(precision: str) -> ClassificationTask:
    data = fedloom.load_mnist5k()
    return ClassificationTask(
        partial(fedloom.build_model, "mlp", data.input_shape, data.num_classes),
        data,
        IID(num_clients=20),
        seed=SEED,
        lr=0.05,
        batch_size=10,
        local_epochs=1,
        precision=precision,
    )


def run(task: ClassificationTask, backend: Any = None, rounds: int = 4) -> Federation:
    fed = Federation(task, FedAvg(clients_per_round=5), backend, rounds=rounds, seed=SEED)
    fed.run()
    return fed


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def fp32_mnist() -> Federation:
    return run(mnist_task("fp32"))


def test_bf16_sequential_close_to_fp32_and_global_model_stays_fp32(fp32_mnist: Federation) -> None:
    fed = run(mnist_task("bf16"))
    assert fed.params.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in fed.model.parameters())
    drift = rel(fed.params, fp32_mnist.params)
    assert 0 < drift < REL_TOL, drift
    got, want = fed.last_eval, fp32_mnist.last_eval
    assert want["accuracy"] > 0.7  # a model that learned something: the comparison means a lot
    assert abs(got["accuracy"] - want["accuracy"]) <= ACC_TOL, (got, want)
    assert abs(got["test_loss"] - want["test_loss"]) <= REL_TOL * want["test_loss"], (got, want)


def test_bf16_vectorized_runs_vmap_under_autocast(fp32_mnist: Federation) -> None:
    task = mnist_task("bf16")
    engine = VectorizedClients(task, SEED)
    assert engine.vectorized and engine.path == "vmap"  # the fused kernels are float32 only
    fed = run(task, engine)
    assert fed.params.dtype == torch.float32
    sequential = run(mnist_task("bf16"))
    assert rel(fed.params, sequential.params) < REL_TOL
    drift = rel(fed.params, fp32_mnist.params)
    assert 0 < drift < REL_TOL, drift
    assert abs(fed.last_eval["accuracy"] - fp32_mnist.last_eval["accuracy"]) <= ACC_TOL


def test_fp16_trains_sequentially_with_a_scaler() -> None:
    task = make_tiny_task(precision="fp16")
    engine = VectorizedClients(task, SEED)
    assert not engine.vectorized and "fp16" in str(engine.fallback_reason)
    fed = run(task, engine, rounds=2)
    ref = run(make_tiny_task(), rounds=2)
    assert fed.params.dtype == torch.float32 and bool(torch.isfinite(fed.params).all())
    assert 0 < rel(fed.params, ref.params) < 0.05


def test_unknown_precision_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        make_tiny_task(precision="fp8")
