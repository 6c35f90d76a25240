"""DP-SGD through the user's own model, loss and optimizer: each sample's gradient is
clipped to C, the noise on the sum has std z*C, the epsilon is dp-accounting's for the same
steps, z = 0 with a huge C is plain SGD, BatchNorm is refused, and runs are reproducible
and resumable."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_task, resumed, tiny_mlp
from torch import nn

from fedloom import ClassificationTask, FedAvg, Federation
from fedloom.algorithms.client import LocalRun, federated_parameters
from fedloom.errors import JobError
from fedloom.params import flatten_module
from fedloom.privacy.dpsgd import DPSGD, DPSGDPart
from fedloom.runtime.clientpart import ClientPart
from fedloom.stages import Staged
from fedloom.strategies import FedProx
from fedloom.task import ClientContext

EPS64 = 2.0**-53


def local_run(model: nn.Module, lr: float = 0.0, seed: int = 0) -> LocalRun:
    """Client 0 of the tiny task (12 samples), training ``model`` from its own parameters."""
    spec, flat = flatten_module(model, ())
    glob = flat.clone()
    params, views = federated_parameters(model, spec, glob)
    ctx = ClientContext(0, 1, torch.Generator().manual_seed(seed), {}, {}, glob, {})
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    run = LocalRun(make_tiny_task(), model, opt, ctx, spec, flat, glob, params, views)
    run._count_steps()
    return run


def steps(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    part: DPSGDPart | None,
    lr: float = 0.0,
    seed: int = 0,
    reduction: str = "mean",
) -> tuple[list[torch.Tensor], LocalRun]:
    """Train on ``batches`` with the user's plain loop (under ``part`` if given); the last
    step's gradients."""
    run = local_run(model, lr, seed)
    if part is not None:
        part.begin(run)
    for x, y in batches:
        run.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction=reduction).backward()
        run.optimizer.step()
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    run.close()
    if part is not None:
        part.end(run)
    return grads, run


def mlp64(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_mlp().double()


def batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def test_one_huge_sample_moves_the_gradient_by_at_most_c():
    """z = 0: B * (step gradient) is the sum of clipped per-sample gradients, so removing the
    huge sample changes it by that sample's clipped gradient: norm <= C (float64 rounding)."""
    clip = 0.5
    x, y = batch(6)
    x[2] *= 1e4
    with_huge, _ = steps(mlp64(), [(x, y)], DPSGDPart(0.0, clip))
    keep = torch.tensor([0, 1, 3, 4, 5])
    without, _ = steps(mlp64(), [(x[keep], y[keep])], DPSGDPart(0.0, clip))
    contribution = 6 * flat(with_huge) - 5 * flat(without)
    assert float(contribution.norm()) <= clip * (1 + 1e-9)
    plain, _ = steps(mlp64(), [(x[2:3], y[2:3])], None)
    assert float(flat(plain).norm()) > 100 * clip  # it was clipped, hard
    assert float(flat(with_huge).norm()) <= clip * (1 + 1e-9)  # the mean of 6 clipped ones


def test_zero_noise_and_huge_c_is_plain_sgd():
    """Per-sample gradients summed and divided by B equal autograd's batch mean up to the
    order of the float64 sums: |error| <= B * EPS64 * sum|terms| per step, far below 1e-12
    for these O(1) values over 5 steps."""
    batches = [batch(4, seed=s) for s in range(5)]
    dp_model, plain_model = mlp64(), mlp64()
    steps(dp_model, batches, DPSGDPart(0.0, 1e12), lr=0.1)
    steps(plain_model, batches, None, lr=0.1)
    for a, b, start in zip(dp_model.parameters(), plain_model.parameters(), mlp64().parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert float((a - start).detach().abs().max()) > 1e-3  # it trained


def test_zero_noise_and_huge_c_is_plain_sgd_for_a_summed_loss_too():
    """A sum loss: the clipped per-sample gradients are summed, not divided by B (a missing
    or extra 1/B would show as a factor of 4 here)."""
    batches = [batch(4, seed=s) for s in range(5)]
    dp_model, plain_model = mlp64(), mlp64()
    steps(dp_model, batches, DPSGDPart(0.0, 1e12, loss_reduction="sum"), 0.05, reduction="sum")
    steps(plain_model, batches, None, lr=0.05, reduction="sum")
    for a, b in zip(dp_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_the_noise_has_the_configured_std():
    """Same batch, same seed, z and 0: the difference of the gradients is the noise over B;
    n draws of N(0, 1) after scaling: variance and mean within 5 standard errors."""
    z, clip, size = 1.3, 0.7, 4

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(300, 200).double()

    g = torch.Generator().manual_seed(3)
    xy = (torch.randn(size, 300, generator=g, dtype=torch.float64), torch.randint(0, 200, (size,)))
    noised, _ = steps(model(), [xy], DPSGDPart(z, clip), seed=5)
    clean, _ = steps(model(), [xy], DPSGDPart(0.0, clip), seed=5)
    draws = (flat(noised) - flat(clean)) * size / (z * clip)
    n = draws.numel()
    assert n > 60_000
    assert abs(float(draws.mean())) < 5 / math.sqrt(n)
    assert abs(float(draws.var()) - 1) < 5 * math.sqrt(2 / (n - 1))
    again, _ = steps(model(), [xy], DPSGDPart(z, clip), seed=5)
    assert torch.equal(flat(again), flat(noised))


def test_epsilon_is_dp_accountings_for_the_same_steps():
    """Client 0 (12 samples) takes batches 4, 4, 4, 3 (q = 4/12, 3/12): dp-accounting's RDP
    accountant composing one Poisson-sampled Gaussian per step gives the same epsilon."""
    z, delta = 1.1, 1e-5
    sizes = [4, 4, 4, 3]
    _, run = steps(
        mlp64(), [batch(b, seed=i) for i, b in enumerate(sizes)], DPSGDPart(z, 1.0, delta)
    )
    acc = dp_accounting.rdp.RdpAccountant()
    for b in sizes:
        acc.compose(dp_accounting.PoissonSampledDpEvent(b / 12, dp_accounting.GaussianDpEvent(z)))
    expected = acc.get_epsilon(delta)
    assert run.metrics["sample_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert run.ctx.state["dpsgd"]["runs"] == [[0.25, z, 1], [4 / 12, z, 3]]


def test_batchnorm_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\)"):
        DPSGDPart(1.0).begin(local_run(model))


def test_an_own_loop_without_a_task_is_refused():
    model = tiny_mlp()
    spec, flat_ = flatten_module(model, ())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = ClientContext(0, 1, torch.Generator().manual_seed(0))
    with pytest.raises(JobError, match="sample count"):  # refused before any training
        ClientPart({"name": "dpsgd", "noise_multiplier": 1.0}, model, opt, ctx, spec, flat_, {})


def make_fed(rounds: int, seed: int = 0, strategy: Any = None, **kw: Any) -> Federation:
    inner = strategy or FedAvg(clients_per_round=3)
    task: ClassificationTask = make_tiny_task(**kw)
    return Federation(task, Staged(inner, [DPSGD(1.0, 1.0)]), rounds=rounds, seed=seed)


def test_federation_same_seed_same_numbers_and_resume(tmp_path: Path):
    straight, second, _ = resumed(make_fed, tmp_path, rounds=3, stop=1)
    assert dict(straight.backend.states.items()) == dict(second.backend.states.items())
    again = make_fed(3).run()
    assert torch.equal(again.params, straight.params)
    assert not torch.equal(make_fed(3, seed=1).run().params, straight.params)
    for record in straight.history:
        assert record["sample_epsilon_max"] > 0
    for state in straight.backend.states.values():
        assert state["dpsgd"]["epsilon"] > 0 and state["dpsgd"]["participations"] >= 1


def test_federation_with_fedprox_inside():
    prox = make_fed(2, strategy=FedProx(mu=0.5, clients_per_round=3)).run()
    plain = make_fed(2).run()
    assert not torch.equal(prox.params, plain.params)


def test_a_noise_seed_makes_the_step_noise_independent_of_the_run_seed():
    """A deployed client's part carries its own noise_seed: the run seed (the ctx generator,
    which the aggregator knows) no longer changes the noise; without one it does."""
    xy = batch(4)

    def grads(seed: int, **kw: Any) -> torch.Tensor:
        return flat(steps(mlp64(), [xy], DPSGDPart(1.0, 1.0, **kw), seed=seed)[0])

    assert torch.equal(grads(0, noise_seed=7), grads(5, noise_seed=7))
    assert not torch.equal(grads(0, noise_seed=7), grads(0, noise_seed=8))
    assert not torch.equal(grads(0), grads(5))
    stage = DPSGD(1.0, noise_seed=7)
    assert stage.options()["noise_seed"] == 7 and "noise_seed" not in DPSGD(1.0).options()
