"""Local DP: every update leaves its client clipped to C, with noise of std z*C from the
client's own seed; each client's epsilon grows per participation, lives in its state and
survives checkpoint/resume; FedProx's part composes; parts that send more are refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_task, resumed, tiny_mlp
from torch import nn

from fedloom import FedAvg, Federation
from fedloom.algorithms.client import LocalRun, federated_parameters
from fedloom.algorithms.scaffold import Scaffold
from fedloom.errors import FedloomError
from fedloom.params import flatten_module
from fedloom.privacy import Accountant
from fedloom.privacy.clientdp import keyed_seed
from fedloom.privacy.clientnoise import ClientNoise
from fedloom.privacy.local import LocalDP, LocalDPPart
from fedloom.stages import Stage, Staged
from fedloom.strategies import FedNova, FedProx
from fedloom.task import ClientContext
from fedloom.update import ClientUpdate

EPS32 = 2.0**-24  # float32's unit roundoff


class DeltaNorms(Stage):
    """Records each update's delta norm (float64) and the global model's norm, as sent."""

    def __init__(self) -> None:
        self.norms: list[tuple[float, float]] = []

    def process_update(
        self, round: int, update: ClientUpdate, global_params: torch.Tensor
    ) -> ClientUpdate:
        delta = update.params.double() - global_params.double()
        self.norms.append((float(delta.norm()), float(update.params.double().norm())))
        return update


def make_fed(stage: Stage, rounds: int = 3, seed: int = 0, strategy: Any = None) -> Federation:
    inner = strategy or FedAvg(clients_per_round=3)
    return Federation(make_tiny_task(), Staged(inner, [stage]), rounds=rounds, seed=seed)


def local_run(model: nn.Module, seed: int = 0, rnd: int = 1, cid: int = 0) -> LocalRun:
    """A client's run whose model holds the global model (delta 0) of all zeros."""
    spec, flat = flatten_module(model, ())
    flat.zero_()
    glob = flat.clone()
    params, views = federated_parameters(model, spec, glob)
    gen = torch.Generator().manual_seed(seed * 1000 + rnd * 100 + cid)
    ctx = ClientContext(cid, rnd, gen, {}, {}, glob, {})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return LocalRun(make_tiny_task(), model, opt, ctx, spec, flat, glob, params, views)


def test_every_sent_delta_is_clipped_to_c_without_noise():
    """z = 0: each delta's norm is at most C, up to float32 rounding of ``global + delta``
    (per element at most EPS32 of the sent value, so EPS32 * ||update|| in norm); and the
    bound is reached, so clipping was at work."""
    clip, record = 0.05, DeltaNorms()
    fed = Federation(
        make_tiny_task(),
        Staged(FedAvg(clients_per_round=3), [LocalDP(0.0, clip), record]),
        rounds=3,
        seed=0,
    )
    fed.run()
    assert len(record.norms) == 9
    for norm, sent in record.norms:
        assert norm <= clip * (1 + 4 * EPS32) + 2 * EPS32 * sent
    assert max(n for n, _ in record.norms) > clip * 0.999


def test_the_noise_has_the_configured_std():
    """n draws of N(0, (z C)^2): the sample variance over sigma^2 has std sqrt(2 / (n - 1))
    and the mean sigma / sqrt(n); both within 5 standard errors."""
    z, clip = 1.3, 0.4
    run = local_run(nn.Linear(500, 400))
    LocalDPPart(z, clip).end(run)
    noise = (run.flat - run.global_flat).double()
    n, sigma = noise.numel(), z * clip
    assert n > 200_000
    assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(n)
    assert abs(float(noise.var()) / sigma**2 - 1) < 5 * math.sqrt(2 / (n - 1))
    assert run.metrics["local_epsilon"] == Accountant(1e-5).epsilon((1.0, z, 1))


def test_the_noise_comes_from_the_clients_own_seed():
    def noise(**where: int) -> torch.Tensor:
        run = local_run(nn.Linear(20, 10), **where)
        LocalDPPart(1.0, 1.0).end(run)
        return run.flat.clone()

    a = noise(seed=1, rnd=2, cid=3)
    assert torch.equal(a, noise(seed=1, rnd=2, cid=3))
    for other in ({"seed": 2, "rnd": 2, "cid": 3}, {"seed": 1, "rnd": 3, "cid": 3}):
        assert not torch.equal(a, noise(**other))


def test_epsilon_grows_per_participation_kept_in_state_and_resumed(tmp_path: Path):
    z, delta = 1.5, 1e-5
    straight, second, checkpoint = resumed(lambda r: make_fed(LocalDP(z, 0.5, delta), r), tmp_path)
    states = second.backend.states
    assert dict(states.items()) == dict(straight.backend.states.items())
    saved = checkpoint["backend"]["clients"]
    assert saved  # plain numbers, read back with weights_only
    acc = Accountant(delta)
    per_k = [acc.epsilon((1.0, z, k)) for k in range(1, 5)]
    assert per_k == sorted(per_k) and len(set(per_k)) == 4  # one mechanism per participation
    for state in states.values():
        own = state["local_dp"]
        k = own["participations"]
        assert own["runs"] == [[1.0, z, k]] and own["epsilon"] == per_k[k - 1]
    # each round's record: the largest epsilon among that round's clients
    for record in straight.history:
        assert record["local_epsilon_max"] in per_k


def test_same_seed_same_numbers_other_seed_others():
    a, b, c = (make_fed(LocalDP(1.0, 0.5), seed=s).run() for s in (0, 0, 1))
    assert torch.equal(a.params, b.params)
    assert not torch.equal(a.params, c.params)


def test_composes_with_fedprox_and_names_it_in_the_plan():
    staged = Staged(FedProx(mu=0.1, clients_per_round=3), [LocalDP(1.0, 0.5)])
    staged.start(0)
    plan = staged.configure(1, list(range(6)), np.random.default_rng(0))
    assert plan.client_algorithm == "local_dp"
    assert plan.client_options["inner"] == {"name": "fedprox", "mu": 0.1}
    prox = make_fed(LocalDP(1.0, 0.5), strategy=FedProx(mu=0.5, clients_per_round=3)).run()
    plain = make_fed(LocalDP(1.0, 0.5)).run()
    assert not torch.equal(prox.params, plain.params)  # the proximal term ran inside


@pytest.mark.parametrize("strategy, name", [(Scaffold(), "scaffold"), (FedNova(), "fednova")])
def test_parts_that_send_more_than_the_model_are_refused(strategy: Any, name: str):
    with pytest.raises(ValueError, match=rf"strategy.name = '{name}'.*privacy.mode = 'local'"):
        Staged(strategy, [LocalDP(1.0)])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, "delta"),
        ({"noise_multiplier": 1.0, "accountant": "prv"}, "accountant"),
    ],
)
def test_bad_values_are_refused_naming_the_key(kwargs: dict[str, Any], key: str):
    with pytest.raises(ValueError, match=key):
        LocalDP(**kwargs)


def test_model_sized_like_the_tiny_mlp_is_what_the_clients_send():
    """The clipped and noised buffer is the whole federated flat buffer (what is sent)."""
    run = local_run(tiny_mlp())
    LocalDPPart(1.0, 1.0).end(run)
    assert run.flat.shape == run.global_flat.shape and bool((run.flat != 0).all())


# -- a deployed client's own noise (fedloom.privacy.clientnoise) ------------------------------
def noised(part: LocalDPPart, seed: int = 0, rnd: int = 1, cid: int = 0) -> torch.Tensor:
    run = local_run(nn.Linear(20, 10), seed=seed, rnd=rnd, cid=cid)
    part.end(run)
    return run.flat.clone()


def taken(noise: ClientNoise, part: dict[str, Any] | None, **config: Any) -> dict[str, Any]:
    return noise.take({**config, **({"algorithm": part} if part else {})}, client_id=3)


def part_of(config: dict[str, Any]) -> LocalDPPart:
    options = dict(config["algorithm"])
    options.pop("name")
    return LocalDPPart(**options)


WORK = {"name": "local_dp", "noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5}


def test_a_noise_seed_makes_the_noise_independent_of_the_run_seed():
    """The simulation's part (no noise_seed) follows the run seed; with a noise_seed the run
    seed plays no part, and the noise is the keyed draw of (seed, part, round, client)."""
    assert not torch.equal(noised(LocalDPPart(1.0, 1.0)), noised(LocalDPPart(1.0, 1.0), seed=1))
    part = LocalDPPart(1.0, 1.0, noise_seed=7)
    a = noised(part)
    assert torch.equal(a, noised(part, seed=1)) and torch.equal(a, noised(part, seed=99))
    g = torch.Generator().manual_seed(keyed_seed(7, "local_dp", 1, 0))
    assert torch.equal(a, torch.randn(a.shape, generator=g))  # global 0, delta 0: the noise
    for other in ({"rnd": 2}, {"cid": 1}):
        assert not torch.equal(a, noised(part, **other))
    assert not torch.equal(a, noised(LocalDPPart(1.0, 1.0, noise_seed=8)))


def test_a_deployed_client_puts_its_own_secret_seed_in_the_work():
    """Two clients without a fixed seed draw different noise for the same work; a fixed seed
    is that of a stage that carries it (the simulation of such clients)."""
    config = taken(ClientNoise(), WORK, local_epochs=2)
    assert config["local_epochs"] == 2 and isinstance(config["algorithm"]["noise_seed"], int)
    assert {k: v for k, v in config["algorithm"].items() if k != "noise_seed"} == WORK
    a, b = (noised(part_of(taken(ClientNoise(), WORK))) for _ in range(2))
    assert not torch.equal(a, b)
    fixed = part_of(taken(ClientNoise(7), WORK))
    assert fixed.noise_seed == 7
    stage = LocalDP(1.0, 0.5, noise_seed=7)  # what a simulation of such clients puts in plans
    assert {"name": stage.part, **stage.options()} == {**WORK, "accountant": "rdp", "noise_seed": 7}
    assert repr(ClientNoise(7)) == "ClientNoise(fixed=True, expected=None)"  # never the seed
    inner = taken(ClientNoise(5), {**WORK, "inner": {"name": "dpsgd", "noise_multiplier": 2.0}})
    assert inner["algorithm"]["inner"]["noise_seed"] == 5  # a DP part inside gets it too
    plain = {"algorithm": {"name": "fedprox", "mu": 0.1}, "local_epochs": 1}
    assert ClientNoise().take(plain, 0) == plain and ClientNoise().take({}, 0) == {}


@pytest.mark.parametrize(
    "work, match",
    [
        ({**WORK, "noise_seed": 1}, "carries a noise_seed"),
        ({**WORK, "noise_multiplier": 0.0}, "noise_multiplier = 0"),
        ({**WORK, "noise_multiplier": float("nan")}, "noise_multiplier must be a finite"),
        ({**WORK, "noise_multiplier": float("inf")}, "noise_multiplier must be a finite"),
        ({**WORK, "clip_norm": float("inf")}, "clip_norm must be a finite"),
        ({**WORK, "delta": 1.0}, "delta"),
        ({**WORK, "sigma": 1.0}, "sigma"),
        ({**WORK, "inner": {"name": "scaffold"}}, "scaffold"),
    ],
)
def test_a_deployed_client_refuses_work_it_must_not_do(work: dict[str, Any], match: str):
    with pytest.raises(FedloomError, match=match):
        taken(ClientNoise(), work)


def test_a_client_whose_config_names_the_mode_runs_only_its_values():
    want = {**WORK, "accountant": "rdp"}
    noise = ClientNoise(expected=want)
    assert taken(noise, WORK)["algorithm"]["clip_norm"] == 0.5
    for work, match in [
        ({**WORK, "noise_multiplier": 0.5}, r"noise_multiplier = 0\.5, this client's config 1\.0"),
        ({**WORK, "clip_norm": 2.0}, r"clip_norm = 2\.0"),
        ({**WORK, "accountant": "pld"}, r"accountant = 'pld'"),
        ({**WORK, "name": "dpsgd"}, r"asks for client part 'local_dp'.*runs 'dpsgd'"),
        (None, r"asks for client part 'local_dp'.*runs None"),
        ({"name": "fedprox", "mu": 0.1}, r"runs 'fedprox'"),
    ]:
        with pytest.raises(FedloomError, match=match):
            taken(noise, work)


@pytest.mark.parametrize("seed", [-1, 2**63, True, 1.5])
def test_a_bad_client_seed_is_refused(seed: Any):
    with pytest.raises(ValueError, match="noise_seed"):
        ClientNoise(seed)
