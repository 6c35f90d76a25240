"""train.device, train.precision and train.deterministic as fedloom.accel resolves them.

The device choice is a pure function of the machine's GPU count and torchrun's LOCAL_RANK,
so every branch is checked here on a CPU machine; :func:`resolve_device` is checked with
its availability function replaced (the one fact a CPU machine cannot supply).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from fedloom.accel import (
    MixedPrecision,
    choose_device,
    deterministic,
    precision_problem,
    resolve_device,
    worker_device,
)
from fedloom.accel import device as device_module
from fedloom.accel.determinism import CUBLAS_KEY
from fedloom.config import load_config
from fedloom.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "gpus", "local_rank", "want"),
    [
        ("auto", 0, None, "cpu"),
        ("auto", 0, 1, "cpu"),
        ("auto", 2, None, "cuda"),  # unnumbered: a pool spreads it over the GPUs
        ("auto", 2, 1, "cuda:1"),  # torchrun: the rank's own GPU
        ("cuda", 1, None, "cuda"),
        ("cuda", 4, 3, "cuda:3"),
        ("cuda:1", 2, None, "cuda:1"),
        ("cuda:1", 2, 0, "cuda:1"),  # a numbered device is taken as given
        ("cpu", 4, 2, "cpu"),
        ("mps", 0, None, "mps"),
    ],
)
def test_choose_device(spec: str, gpus: int, local_rank: int | None, want: str) -> None:
    assert choose_device(spec, gpus, local_rank) == torch.device(want)


@pytest.mark.parametrize(
    ("spec", "gpus", "local_rank", "message"),
    [
        ("cuda", 0, None, "no CUDA device"),
        ("cuda:2", 2, None, "has 2 CUDA device(s)"),
        ("auto", 2, 2, "LOCAL_RANK 2"),
        ("gpu", 1, None, "is not a device; allowed: auto, cpu, cuda, cuda:N"),
    ],
)
def test_choose_device_refuses(spec: str, gpus: int, local_rank: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        choose_device(spec, gpus, local_rank)


def test_resolve_device_reads_availability_and_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cuda_count", lambda: 2)
    assert resolve_device("auto", env={}) == torch.device("cuda")
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert resolve_device("auto", env=torchrun) == torch.device("cuda", 1)
    assert resolve_device("cuda", env=torchrun) == torch.device("cuda", 1)
    # LOCAL_RANK without a world of several processes is no torchrun run
    assert resolve_device("cuda", env={"LOCAL_RANK": "1"}) == torch.device("cuda")
    monkeypatch.setattr(device_module, "cuda_count", lambda: 0)
    assert resolve_device("auto", env=torchrun) == torch.device("cpu")


def test_resolve_device_on_this_machine() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", env={}).type == want
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_worker_device_one_gpu_per_worker() -> None:
    spread = [worker_device(torch.device("cuda"), w, 3) for w in range(5)]
    assert spread == [torch.device("cuda", i) for i in (0, 1, 2, 0, 1)]
    pinned = torch.device("cuda", 1)
    assert {worker_device(pinned, w, 3) for w in range(4)} == {pinned}
    assert worker_device(torch.device("cpu"), 3, 3) == torch.device("cpu")


def test_config_checks_device_and_precision() -> None:
    cfg = load_config(None, ["train.device='auto'", "train.precision='bf16'"])
    assert (cfg.train.device, cfg.train.precision, cfg.train.deterministic) == (
        "auto",
        "bf16",
        False,
    )
    with pytest.raises(ConfigError, match=r"train\.precision: .*'fp32', 'bf16' or 'fp16'"):
        load_config(None, ["train.precision='fp8'"])
    with pytest.raises(ConfigError, match=r"train\.device: 'gpu' is not a device; allowed"):
        load_config(None, ["train.device='gpu'"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device: 'cuda:0': this machine has no"):
            load_config(None, ["train.device='cuda:0'"])


def test_precision_problem() -> None:
    assert precision_problem("fp32", "cpu") is None
    assert precision_problem("bf16", "cpu") is None
    assert "not one of fp32, bf16, fp16" in str(precision_problem("fp8", "cpu"))
    with pytest.raises(ValueError, match="precision 'half' is not one of"):
        MixedPrecision("half")


def test_mixed_precision_on_cpu() -> None:
    plain = MixedPrecision()
    assert not plain.enabled and plain.scaler is None and plain.fresh() is plain
    bf16 = MixedPrecision("bf16", "cpu")
    model = torch.nn.Linear(4, 2)
    with bf16.autocast():
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16 and model.weight.dtype == torch.float32
    fp16 = MixedPrecision("fp16", "cpu")  # torch has a CPU gradient scaler: supported
    assert fp16.scaler is not None and fp16.fresh().scaler is not fp16.scaler
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    # the scale starts at 2**16: a scaled gradient past fp16's 65504 overflows, that step is
    # skipped and the scale halved, so within a few steps one goes through
    for _ in range(4):
        with fp16.autocast():
            loss = model(x).float().pow(2).mean()
        fp16.backward(loss)
        fp16.step(opt)
        opt.zero_grad()
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)


def test_deterministic_switches_on_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUBLAS_KEY, raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        assert CUBLAS_KEY not in os.environ  # needed on CUDA only
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic(False, torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled() == before
        assert CUBLAS_KEY not in os.environ
    with deterministic(True, torch.device("cuda", 0)):  # no CUDA op runs: only the setting
        assert os.environ[CUBLAS_KEY] == ":4096:8"
    assert CUBLAS_KEY not in os.environ
    monkeypatch.setenv(CUBLAS_KEY, ":16:8")  # the caller's own choice is kept
    with deterministic(True, torch.device("cuda")):
        assert os.environ[CUBLAS_KEY] == ":16:8"
    assert os.environ[CUBLAS_KEY] == ":16:8"


def test_deterministic_restores_after_an_error() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="boom"), deterministic(True):
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before


def test_chunks_from_a_cpu_cache_or_a_gpu_memory_budget() -> None:
    from fedloom.simulation.vectorized import _default_budget_mb, chunk_size

    row = 800_000  # bytes of the 2NN's float32 parameters
    assert chunk_size(row, 512, in_cache=True) == 10  # the fused step on a CPU: 8 MiB cached
    assert chunk_size(row, 512, in_cache=False) == 223  # parameters, gradients, temporary
    # a quarter of a GPU's free memory: a 1,000-client cohort is one chunk
    assert chunk_size(row, 40 * 1024, in_cache=False) == 17895
    assert _default_budget_mb(torch.device("cpu")) == 512


def test_classification_task_moves_to_a_device() -> None:
    from conftest import make_tiny_task

    task = make_tiny_task(device="auto")
    assert task.device == resolve_device("auto")
    assert task.to(task.device) is task
    moved = task.to("meta")  # a device without data: only where the tensors live changes
    assert moved is not task and moved.device == torch.device("meta")
    assert moved._x.device.type == "meta" and moved._test_y.device.type == "meta"
    assert task._x.device == task.device and moved.parts is task.parts
