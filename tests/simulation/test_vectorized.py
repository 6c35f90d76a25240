"""VectorizedClients: the same models as the sequential engine, or a logged fallback to it.

Every test compares against :class:`InProcessClients` on the tiny six-client problem of
``conftest`` (unequal client sizes, so partial batches and early-finishing clients occur).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import CLIENT_SIZES, IN_FEATURES, NUM_CLASSES, tiny_dataset, tiny_parts
from torch import nn

from fedloom import (
    ClassificationTask,
    ClientContext,
    FedAvg,
    Federation,
    InProcessClients,
    RoundPlan,
    Task,
    TensorDataset,
    models,
)
from fedloom.simulation import fused
from fedloom.simulation.vectorized import VectorizedClients

torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps small ops fast

SEED = 7
# float32, sums in another order: eps32 (6e-8) x 16 terms (the widest dot product) x |x| <= 8
# x <= 30 steps (3 rounds of <= 10) = 2.3e-4; a ReLU flip is rare on ~100 samples (seen: 1e-6).
ATOL = 2.5e-4
LOSS_REL = 1e-4  # the mean of float32 losses of models ATOL apart: |dL/dw| * ATOL / L < 1e-4


def logreg() -> nn.Module:
    return models.logreg((IN_FEATURES,), NUM_CLASSES)


def mlp() -> nn.Module:
    return models.mlp((IN_FEATURES,), NUM_CLASSES, hidden=16)


def make_task(
    model_fn: Callable[[], nn.Module] = mlp,
    cls: type[ClassificationTask] = ClassificationTask,
    **kw: Any,
) -> ClassificationTask:
    kw.setdefault("lr", 0.1)
    kw.setdefault("batch_size", 5)
    return cls(model_fn, tiny_dataset(), tiny_parts(), **kw)


def run(task: Task, backend: Any, rounds: int = 3, per_round: int = 4) -> Federation:
    strategy = FedAvg(clients_per_round=per_round)
    fed = Federation(task, strategy, backend=backend, rounds=rounds, seed=SEED)
    fed.run()
    return fed


def both(make: Callable[[], Task], fuse: bool = True, **kw: Any) -> tuple[Federation, Federation]:
    """The same run with the sequential engine and with VectorizedClients."""
    seq_task, vec_task = make(), make()
    seq = run(seq_task, InProcessClients(seq_task, SEED), **kw)
    vec = run(vec_task, VectorizedClients(vec_task, SEED, fuse=fuse), **kw)
    return seq, vec


def assert_same_run(seq: Federation, vec: Federation, exact: bool = False) -> None:
    if exact:
        assert torch.equal(seq.params, vec.params)
    else:
        assert torch.allclose(seq.params, vec.params, atol=ATOL), (
            (seq.params - vec.params).abs().max()
        )
    for a, b in zip(seq.history, vec.history):
        assert a["clients"] == b["clients"] and a["samples"] == b["samples"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_REL)


@pytest.mark.parametrize("model_fn", [logreg, mlp], ids=["logreg", "mlp"])
@pytest.mark.parametrize(
    "config",
    [
        {},  # B=5: partial last batches, clients of 2..5 steps
        {"batch_size": 4, "local_epochs": 2, "weight_decay": 0.01},
        {"batch_size": 32},  # one partial batch per client
    ],
    ids=["b5", "b4-e2-wd", "b32"],
)
@pytest.mark.parametrize("path", ["fused", "vmap"])
def test_matches_the_sequential_engine(
    model_fn: Callable[[], nn.Module], config: dict, path: str
) -> None:
    seq, vec = both(lambda: make_task(model_fn, **config), fuse=path == "fused", per_round=4)
    assert vec.backend.vectorized and vec.backend.fallback_reason is None  # type: ignore[attr-defined]
    assert vec.backend.path == path  # type: ignore[attr-defined]
    assert_same_run(seq, vec)


def test_float64_agrees_to_rounding() -> None:
    """In float64 the only differences left are rounding: the algorithm itself is the same."""
    d = tiny_dataset()
    d64 = TensorDataset("tiny64", d.train_x.double(), d.train_y, d.test_x.double(), d.test_y, 3)

    def make() -> ClassificationTask:
        return ClassificationTask(
            lambda: mlp().double(), d64, tiny_parts(), lr=0.1, batch_size=3, local_epochs=2
        )

    seq, vec = both(make, per_round=6)
    assert vec.params.dtype == torch.float64
    # float64: eps64 (1.1e-16) x 16 terms x |x| <= 8 x <= 36 steps = 5e-13 < 1e-12
    assert torch.allclose(seq.params, vec.params, rtol=0, atol=1e-12)


def test_all_clients_of_unequal_size_in_one_round() -> None:
    seq, vec = both(lambda: make_task(batch_size=3, local_epochs=3), rounds=2, per_round=6)
    assert vec.backend.vectorized  # type: ignore[attr-defined]
    assert_same_run(seq, vec)


def collect_both(
    make: Callable[[], ClassificationTask], plan: RoundPlan, rnd: int = 2, **vec_kw: Any
) -> tuple[list, list]:
    """One round's updates from each engine, from the same global model."""
    seq_task, vec_task = make(), make()
    seq, vec = InProcessClients(seq_task, SEED), VectorizedClients(vec_task, SEED, **vec_kw)
    global_params = seq.flat.detach().clone() + 0.01
    seq.distribute(rnd, plan, global_params)
    vec.distribute(rnd, plan, global_params)
    seq_updates = [(u, u.params.clone()) for u in seq.collect()]
    vec_updates = [(u, u.params) for u in vec.collect()]
    return seq_updates, vec_updates


def test_collect_yields_per_client_views_in_plan_order() -> None:
    plan = RoundPlan([0, 2, 3, 5], {"local_epochs": 2})
    seq_updates, vec_updates = collect_both(lambda: make_task(batch_size=5), plan)
    assert [u.client_id for u, _ in vec_updates] == plan.clients
    base = vec_updates[0][1]._base  # torch's Tensor._base: views of one buffer, not copies
    for (s, sp), (v, vp) in zip(seq_updates, vec_updates):
        n = CLIENT_SIZES[v.client_id]
        assert v.num_samples == n and v.round == 2
        assert v.metrics["steps"] == 2 * math.ceil(n / 5) == s.metrics["steps"]
        assert v.metrics["epochs"] == 2
        assert v.metrics["loss"] == pytest.approx(s.metrics["loss"], rel=LOSS_REL)
        assert vp.dim() == 1 and vp.dtype == sp.dtype and vp._base is base  # a row, no copy
        assert torch.allclose(vp, sp, atol=ATOL)


def test_a_round_without_local_epochs_returns_the_global_model() -> None:
    seq_updates, vec_updates = collect_both(make_task, RoundPlan([1, 4], {"local_epochs": 0}))
    for (s, sp), (v, vp) in zip(seq_updates, vec_updates):
        assert torch.equal(vp, sp) and v.metrics["steps"] == s.metrics["steps"] == 0


def test_chunks_give_the_same_updates() -> None:
    plan = RoundPlan([0, 1, 2, 3, 4, 5])
    _, whole = collect_both(make_task, plan)
    _, chunked = collect_both(make_task, plan, max_cohort=4)
    for (a, ap), (b, bp) in zip(whole, chunked):
        assert a.client_id == b.client_id and a.metrics["steps"] == b.metrics["steps"]
        assert torch.allclose(ap, bp, atol=ATOL)  # the same sums, maybe other BLAS kernels


class TwoGroups(ClassificationTask):
    """SGD with a slower, decayed first layer and a frozen output bias."""

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        first, rest = model[1], [model[3], model[5]]  # type: ignore[index]
        rest[-1].bias.requires_grad_(False)
        return torch.optim.SGD(
            [
                {"params": first.parameters(), "lr": 0.02, "weight_decay": 0.1},
                {"params": [p for m in rest for p in m.parameters()]},
            ],
            lr=0.2,
        )


@pytest.mark.parametrize("path", ["fused", "vmap"])
def test_param_groups_and_frozen_parameters(path: str) -> None:
    seq, vec = both(lambda: make_task(cls=TwoGroups), fuse=path == "fused")
    assert vec.backend.path == path  # type: ignore[attr-defined]
    assert_same_run(seq, vec)


# -- fallbacks ----------------------------------------------------------------------------------


class Wrapped(Task):
    """A Task that is not a ClassificationTask (it delegates to one)."""

    def __init__(self) -> None:
        self.inner = make_task()

    def build_model(self) -> nn.Module:
        return self.inner.build_model()

    @property
    def num_clients(self) -> int:
        return self.inner.num_clients

    def num_samples(self, client_id: int) -> int:
        return self.inner.num_samples(client_id)

    def train_loader(self, client_id: int, ctx: ClientContext):
        return self.inner.train_loader(client_id, ctx)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.inner.evaluate(model)


class Proximal(ClassificationTask):
    def train_step(self, model: nn.Module, batch: Any, ctx: ClientContext) -> torch.Tensor:
        return super().train_step(model, batch, ctx) + 0.1 * sum(
            p.square().sum() for p in model.parameters()
        )


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot batch ``if tensor``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out * 2 if out.sum() > 0 else out


class BatchCentred(nn.Module):
    """No buffers, but a sample's output depends on the rest of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0, keepdim=True))


class RandomNoise(nn.Module):
    """Randomness without a Dropout module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + 0.1 * torch.randn_like(x) if self.training else x)


def with_personal() -> ClassificationTask:
    task = make_task()
    task.personal_layers = ("2.",)
    return task


def with_kept_state() -> ClassificationTask:
    task = make_task()
    task.keep_optimizer_state = True
    return task


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, 6), nn.BatchNorm1d(6), nn.Linear(6, NUM_CLASSES))


def dropout_model() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, 6), nn.Dropout(0.3), nn.Linear(6, NUM_CLASSES))


FALLBACKS: dict[str, tuple[Callable[[], Task], str]] = {
    "not-classification": (Wrapped, "not a ClassificationTask"),
    "train_step": (lambda: make_task(cls=Proximal), "overrides train_step"),
    "adam": (lambda: make_task(optimizer="adam"), "not plain SGD"),
    "momentum": (lambda: make_task(momentum=0.9), "momentum"),
    "batchnorm": (lambda: make_task(bn_model, batch_size=4), "BatchNorm1d"),
    "dropout": (lambda: make_task(dropout_model), "Dropout"),
    "random": (lambda: make_task(RandomNoise), "random"),
    "batch-coupled": (lambda: make_task(BatchCentred), "rest of its batch"),
    "control-flow": (lambda: make_task(Branchy), "vmap"),
    "personal": (with_personal, "personal layers"),
    "optimizer-state": (with_kept_state, "optimizer state"),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_falls_back_to_the_sequential_engine(name: str, caplog: pytest.LogCaptureFixture) -> None:
    make, reason = FALLBACKS[name]
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        seq, vec = both(make, rounds=2)
    backend = vec.backend
    assert isinstance(backend, VectorizedClients) and not backend.vectorized
    assert reason in (backend.fallback_reason or "")
    assert any("VectorizedClients" in r.message and reason in r.message for r in caplog.records)
    assert_same_run(seq, vec, exact=True)
    assert backend.state_dict()["clients"].keys() == seq.backend.state_dict()["clients"].keys()


@pytest.mark.parametrize("path", ["fused", "vmap"])
def test_a_failing_batched_step_falls_back_for_the_round(
    path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = make_task()
    backend = VectorizedClients(task, SEED, fuse=path == "fused")
    assert backend.path == path

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    if path == "fused":  # private: break each engine's inner step; no public hook reaches it
        monkeypatch.setattr(backend._chain, "train", broken)
    else:
        monkeypatch.setattr(backend, "_step", broken)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        vec = run(task, backend)
    assert not backend.vectorized and "RuntimeError: boom" in (backend.fallback_reason or "")
    seq_task = make_task()
    assert_same_run(run(seq_task, InProcessClients(seq_task, SEED)), vec, exact=True)


def test_leaves_the_global_rng_alone_and_checkpoints_like_the_sequential_engine() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    backend = VectorizedClients(make_task(), SEED)
    assert torch.equal(torch.get_rng_state(), before)
    assert backend.state_dict() == {"clients": {}}
    backend.load_state_dict({"clients": {}})
    assert backend.available_clients(1) == list(range(len(CLIENT_SIZES)))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_cohort"):
        VectorizedClients(make_task(), max_cohort=0)
    with pytest.raises(ValueError, match="memory_mb"):
        VectorizedClients(make_task(), memory_mb=0)


# -- the fused step (fused.py): chains of Linear layers and activations --------------------------


class OwnForward(nn.Module):
    """A user's own forward: a method flatten, functional activations, a Linear without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(IN_FEATURES, 7, bias=False)
        self.b = nn.Linear(7, 5)
        self.c = nn.Linear(5, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x.flatten(1)))
        h = F.leaky_relu(self.b(h), 0.2)
        return self.c(h.sigmoid())


class Shared(nn.Module):
    """One Linear applied twice: its gradient is the sum of two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, IN_FEATURES)
        self.out = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(torch.relu(self.fc(x))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, IN_FEATURES)
        self.out = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + torch.relu(self.fc(x)))


def modules_chain() -> nn.Module:
    return nn.Sequential(
        nn.Linear(IN_FEATURES, 6),
        nn.Tanh(),
        nn.Identity(),
        nn.Linear(6, 5),
        nn.LeakyReLU(0.1),
        nn.Dropout(0.0),
        nn.Linear(5, 5),
        nn.Sigmoid(),
        nn.Linear(5, NUM_CLASSES),
    )


def image_task(model_fn: Callable[[], nn.Module]) -> ClassificationTask:
    """Samples of shape (2, 4): a chain must flatten them first to be fused."""
    d = tiny_dataset()
    img = TensorDataset(
        "tiny-img", d.train_x.view(-1, 2, 4), d.train_y, d.test_x.view(-1, 2, 4), d.test_y, 3
    )
    return ClassificationTask(model_fn, img, tiny_parts(), lr=0.1, batch_size=5, weight_decay=0.01)


FUSED: dict[str, Callable[[], Task]] = {
    "own-forward": lambda: make_task(OwnForward, weight_decay=0.01),
    "modules": lambda: make_task(modules_chain, batch_size=3, local_epochs=2),
    "flattened-images": lambda: image_task(lambda: models.mlp((2, 4), NUM_CLASSES, hidden=6)),
}


@pytest.mark.parametrize("name", list(FUSED))
def test_the_fused_step_trains_chains_as_the_sequential_engine(name: str) -> None:
    seq, vec = both(FUSED[name])
    assert vec.backend.path == "fused"  # type: ignore[attr-defined]
    assert_same_run(seq, vec)


NOT_FUSED: dict[str, tuple[Callable[[], Task], str]] = {
    "shared-weights": (lambda: make_task(Shared), "used twice"),
    "residual": (lambda: make_task(Residual), "more than once"),
    "gelu": (
        lambda: make_task(
            lambda: nn.Sequential(nn.Linear(IN_FEATURES, 6), nn.GELU(), nn.Linear(6, 3))
        ),
        "GELU",
    ),
    "late-flatten": (
        lambda: image_task(lambda: nn.Sequential(nn.Linear(4, 5), nn.Flatten(), nn.Linear(10, 3))),
        "flatten",
    ),
}


@pytest.mark.parametrize("name", list(NOT_FUSED))
def test_other_models_take_the_vmap_step(name: str, caplog: pytest.LogCaptureFixture) -> None:
    make, reason = NOT_FUSED[name]
    with caplog.at_level(logging.INFO, logger="fedloom"):
        seq, vec = both(make)
    assert vec.backend.path == "vmap"  # type: ignore[attr-defined]
    assert any("vmap step" in r.message and reason in r.message for r in caplog.records)
    assert_same_run(seq, vec)


def test_fused_chunks_fit_the_cache_on_a_cpu() -> None:
    """A model of ~17 MB a client: the fused step trains one client at a time (in cache), the
    vmap step as many as ``memory_mb`` holds."""

    def big() -> ClassificationTask:
        return make_task(lambda: models.mlp((IN_FEATURES,), NUM_CLASSES, hidden=2048))

    fused, plain = VectorizedClients(big(), SEED), VectorizedClients(big(), SEED, fuse=False)
    assert fused.path == "fused" and plain.path == "vmap"
    assert fused._chunk_size() == 1  # private: the chunking is a memory bound, not a result
    assert plain._chunk_size() == (512 * 2**20) // (3 * plain.spec.nbytes) > 1


def test_low_rank_and_dense_weights_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64-wide hidden layer stays low-rank through 8 steps of batch 3; the first layer (8
    inputs: rank cap 4) flushes to dense after one step; the output layer is dense at once.
    Both ways give the sequential engine's models, in float64 to rounding: in float32 the
    low-rank sums are ordered differently, and a ReLU input within rounding of 0 may flip."""
    seen: list[tuple[str, int]] = []
    original = fused._Weights.finish

    def finish(self: fused._Weights) -> None:
        seen.append((self.mode, self.steps))
        original(self)

    monkeypatch.setattr(fused._Weights, "finish", finish)

    d = tiny_dataset()
    d64 = TensorDataset("tiny64", d.train_x.double(), d.train_y, d.test_x.double(), d.test_y, 3)

    def make() -> ClassificationTask:
        def model() -> nn.Module:
            return models.mlp((IN_FEATURES,), NUM_CLASSES, hidden=64).double()

        return ClassificationTask(model, d64, tiny_parts(), lr=0.1, batch_size=3)

    seq, vec = both(make, per_round=6, rounds=2)
    assert vec.backend.path == "fused"  # type: ignore[attr-defined]
    # float64: eps64 (1.1e-16) x 64 terms x |x| <= 8 x 16 steps (2 rounds of <= 8) = 9e-13
    assert torch.allclose(seq.params, vec.params, rtol=0, atol=1e-12)
    assert ("lowrank", 8) in seen and ("dense", 0) in seen

    task = make()
    dense = VectorizedClients(task, SEED)
    assert dense._chain is not None  # private: force the dense path, no option selects it
    dense._chain.lowrank = False
    seen.clear()  # the trial steps above ran low-rank
    vec_dense = run(task, dense, per_round=6, rounds=2)
    assert torch.allclose(seq.params, vec_dense.params, rtol=0, atol=1e-12)
    assert seen and all(mode == "dense" for mode, _ in seen)


def test_no_step_reads_memory_it_did_not_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every float ``torch.empty`` filled with NaN: a buffer read before it is written (e.g. the
    low-rank factors of clients that have finished, times zero) would poison the models."""
    real_empty = torch.empty

    def nan_empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)

    def make() -> ClassificationTask:
        return make_task(
            lambda: models.mlp((IN_FEATURES,), NUM_CLASSES, hidden=64), batch_size=3, local_epochs=2
        )

    for path in ("fused", "vmap"):
        seq, vec = both(make, fuse=path == "fused", per_round=6, rounds=2)
        assert vec.backend.path == path  # type: ignore[attr-defined]
        assert all(r["rejected"] == 0 for r in vec.history)
        assert_same_run(seq, vec)


class ClampedGrad(ClassificationTask):
    def build_model(self) -> nn.Module:
        model = super().build_model()
        model[1].weight.register_hook(lambda g: g.clamp(-0.01, 0.01))  # type: ignore[index]
        return model


class ClippedStep(ClassificationTask):
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        opt = super().build_optimizer(model)
        opt.register_step_post_hook(lambda o, a, k: None)
        return opt


def forward_hooked() -> nn.Module:
    model = mlp()
    model[3].register_forward_hook(lambda m, i, o: o.clamp(-1, 1))
    return model


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: make_task(cls=ClampedGrad), "parameter 1.weight has gradient hooks"),
        (lambda: make_task(cls=ClippedStep), "the optimizer has step hooks"),
    ],
    ids=["grad-hook", "step-hook"],
)
def test_hooks_the_batched_steps_would_skip_fall_back(
    make: Callable[[], Task], reason: str
) -> None:
    seq, vec = both(make)
    assert vec.backend.path == "sequential"  # type: ignore[attr-defined]
    assert reason in (vec.backend.fallback_reason or "")  # type: ignore[attr-defined]
    assert_same_run(seq, vec, exact=True)


def test_forward_hooks_keep_to_the_vmap_step(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedloom"):
        seq, vec = both(lambda: make_task(forward_hooked))
    assert vec.backend.path == "vmap"  # type: ignore[attr-defined]
    assert any("module 3 has forward hooks" in r.message for r in caplog.records)
    assert_same_run(seq, vec)


def test_a_fused_run_does_not_import_dynamo(tmp_path: Path) -> None:
    """The fused step is checked against autograd alone: the vmap step, whose first ``grad``
    transform imports torch._dynamo (~0.9 s of a short run's start-up), is never built."""
    config = {
        "name": "fused",
        "rounds": 1,
        "data": {"dataset": "mnist5k", "num_clients": 6, "partition": "iid"},
        "model": {"name": "mlp"},
        "train": {"local_epochs": 1, "batch_size": 50},
        "strategy": {"clients_per_round": 3},
        "simulation": {"engine": "vectorized"},
        "output": {
            "dir": (tmp_path / "runs").as_posix(),
            "progress": False,
            "figures": False,
            "tensorboard": False,
        },
    }
    code = f"""
import sys
import fedloom
from fedloom.simulation import VectorizedClients
paths = []
init = VectorizedClients.__init__
def spy(self, *a, **k):
    init(self, *a, **k)
    paths.append(self.path)
VectorizedClients.__init__ = spy
result = fedloom.run({config!r})
assert result.history[-1]["clients"] == 3, result.history
print("paths", paths, "dynamo", "torch._dynamo" in sys.modules)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "paths ['fused'] dynamo False" in proc.stdout, proc.stdout + proc.stderr
