"""Local DP and DP-SGD in deployments: real ``fedloom server`` / ``fedloom client`` processes
(and ``fedloom launch``) whose clients draw their noise from a seed of their own.

With a fixed client seed (``--noise-seed``, ``FEDLOOM_NOISE_SEED``) a deployment equals, bit
for bit, the simulation whose stage carries that seed; its epsilons equal the simulation's.
Which noise a client adds is observed directly: with a learning rate too small to move any
weight, a one-client round's model is the global model plus the client's noise. That noise
is the same under two run seeds when the client seed is fixed, and with no client seed it
differs between two deployments of the same config and from what the run seed would give.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from fedloom import Experiment, load_checkpoint
from fedloom.privacy import Accountant
from fedloom.privacy.clientdp import keyed_seed
from fedloom.seeding import derive_seed

from .conftest import (
    base_config,
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    wait_until,
    with_changes,
    write_config,
)

Z, CLIP, DELTA = 1.0, 0.5, 1e-5


def dp_config(
    tmp_path: Path, name: str, mode: str, *, clients: int = 2, **changes: Any
) -> dict[str, Any]:
    """mnist5k shards, logreg; every client every round; ``[privacy] mode`` with z and C."""
    cfg = base_config(tmp_path / "net", name, address=f"127.0.0.1:{free_port()}")
    keys = {
        "rounds": 2,
        "data.num_clients": clients,
        "strategy.clients_per_round": clients,
        "runtime.min_clients": clients,
        "privacy.mode": mode,
        "privacy.noise_multiplier": Z,
        "privacy.clip_norm": CLIP,
        **changes,
    }
    return with_changes(cfg, **keys)


def deploy(procs, tmp_path: Path, cfg: dict[str, Any], noise_seed: int | None = None) -> list:
    """An aggregator and one ``fedloom client`` process per client, started."""
    config = write_config(tmp_path / f"{cfg['name']}.json", cfg)
    address, name = cfg["runtime"]["address"], cfg["name"]
    flag = [] if noise_seed is None else ["--noise-seed", str(noise_seed)]
    started = [procs.fedloom(f"aggregator {name}", "server", str(config), "--address", address)]
    for i in range(cfg["data"]["num_clients"]):
        args = ("client", str(config), "--server", address, "--client-id", str(i), *flag)
        started.append(procs.fedloom(f"client {i} {name}", *args))
    return started


def finished(procs, cfg: dict[str, Any], started: list, spec) -> tuple[torch.Tensor, list]:
    for p in started:
        assert p.wait(300) == 0, procs.logs()
    return saved_params(run_dir(cfg), spec), read_metrics(run_dir(cfg))


def experiment(cfg: dict[str, Any], out: Path, noise_seed: int | None = None) -> Experiment:
    """The simulation of ``cfg``; with ``noise_seed``, of clients started with that seed."""
    exp = Experiment.from_config(with_changes(cfg, **{"output.dir": out.as_posix()}))
    if noise_seed is not None:
        (stage,) = exp.federation.strategy.stages  # type: ignore[attr-defined]
        stage.noise_seed = noise_seed
    return exp


def test_deployed_local_dp_and_dpsgd_equal_the_simulation_with_the_clients_seed(
    tmp_path, procs
):
    """Both modes at once (four client processes): the model is the seeded simulation's bit for
    bit, not the run-seeded one's; each round's epsilon is the plain simulation's."""
    cfgs = {mode: dp_config(tmp_path, mode, mode) for mode in ("local", "dpsgd")}
    started = {mode: deploy(procs, tmp_path, cfg, noise_seed=7) for mode, cfg in cfgs.items()}
    for mode, metric in (("local", "local_epsilon"), ("dpsgd", "sample_epsilon")):
        cfg = cfgs[mode]
        seeded = experiment(cfg, tmp_path / f"sim7-{mode}", noise_seed=7)
        spec, expected = seeded.federation.spec, seeded.run()
        plain = experiment(cfg, tmp_path / f"sim-{mode}").run()
        net, metrics = finished(procs, cfg, started[mode], spec)
        assert torch.equal(net, expected.params)
        assert not torch.equal(net, plain.params)  # the run seed's noise is not the client's
        eps = [r[f"{metric}_max"] for r in metrics]
        assert eps == [r[f"{metric}_max"] for r in plain.history]
        assert eps == [r[f"{metric}_max"] for r in expected.history]
        assert [r["clients"] for r in metrics] == [2, 2] and eps[0] < eps[1]
        if mode == "local":  # one Gaussian mechanism (q = 1, z) per participation
            assert eps == [Accountant(DELTA).epsilon((1.0, Z, k)) for k in (1, 2)]
        print(f"{mode}: {metric} per round {eps}")


def test_the_noise_is_the_clients_whatever_the_aggregators_run_seed(tmp_path, procs):
    """One client, one round, lr 1e-30 (no weight moves): model - initial model = the noise.
    Client seed 7: the same under run seeds 0 and 1, and exactly the draw of seed 7 alone.
    No client seed: two deployments of one config differ, and neither is the run seed's."""
    runs = {"fixed0": (0, 7), "fixed1": (1, 7), "secret_a": (0, None), "secret_b": (0, None)}
    cfgs, started = {}, {}
    for name, (seed, noise_seed) in runs.items():
        cfgs[name] = dp_config(
            tmp_path, name, "local", clients=1, rounds=1, seed=seed, **{"train.lr": 1e-30}
        )
        started[name] = deploy(procs, tmp_path, cfgs[name], noise_seed)
    noise: dict[str, torch.Tensor] = {}
    for name, cfg in cfgs.items():
        exp = experiment(cfg, tmp_path / f"init-{name}")
        initial = exp.federation.params.clone()
        net, metrics = finished(procs, cfg, started[name], exp.federation.spec)
        noise[name] = (net.double() - initial.double()) / (Z * CLIP)
        assert metrics[0]["local_epsilon_max"] == Accountant(DELTA).epsilon((1.0, Z, 1))

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(noise["fixed0"].numel(), generator=g).double()

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a, b, rtol=0, atol=1e-5)

    own = draw(keyed_seed(7, "local_dp", 1, 0))  # the client seed alone: round 1, client 0
    assert close(noise["fixed0"], own) and close(noise["fixed1"], own)
    # what the run seed gives (the simulation's noise): an aggregator could regenerate it
    by_run_seed = draw(derive_seed(derive_seed(0, "client", 1, 0), "local_dp"))
    for name in ("secret_a", "secret_b"):
        n = noise[name]
        assert abs(float(n.std()) - 1) < 0.05  # N(0, (z C)^2) is there
        assert not close(n, own) and not close(n, by_run_seed)
        assert abs(float(torch.corrcoef(torch.stack([n, by_run_seed]))[0, 1])) < 0.1
    assert not close(noise["secret_a"], noise["secret_b"])


def test_launch_with_a_client_seed_in_the_environment_equals_the_simulation(tmp_path, procs):
    """``fedloom launch`` passes ``FEDLOOM_NOISE_SEED`` to every client process."""
    cfg = dp_config(tmp_path, "launched", "local")
    del cfg["runtime"]["address"]  # launch chooses the port
    config = write_config(tmp_path / "launched.json", cfg)
    proc = procs.fedloom("launch", "launch", "--nproc", "3", str(config), FEDLOOM_NOISE_SEED="11")
    exp = experiment(cfg, tmp_path / "sim11", noise_seed=11)
    expected = exp.run()
    assert proc.wait(300) == 0, proc.output()
    assert torch.equal(saved_params(run_dir(cfg), exp.federation.spec), expected.params)
    eps = [r["local_epsilon_max"] for r in read_metrics(run_dir(cfg))]
    assert eps == [r["local_epsilon_max"] for r in expected.history]


def test_a_client_refuses_work_whose_noise_differs_from_its_config(tmp_path, procs):
    """The aggregator's config asks for z = 0.25, the client's for z = 1: the client exits
    before training, naming the key; the aggregator records no round."""
    cfg = dp_config(tmp_path, "weaker", "local", clients=1, rounds=1)
    server_cfg = with_changes(cfg, **{"privacy.noise_multiplier": 0.25})
    config = write_config(tmp_path / "server.json", server_cfg)
    own = write_config(tmp_path / "client.json", cfg)
    address = cfg["runtime"]["address"]
    procs.fedloom("aggregator", "server", str(config), "--address", address)
    client = procs.fedloom("client", "client", str(own), "--server", address, "--client-id", "0")
    assert client.wait(120) == 2, procs.logs()
    out = client.output()
    assert "noise_multiplier = 0.25, this client's config 1.0" in out
    assert "round 1 trained" not in out and not read_metrics(run_dir(cfg))


def test_deployments_take_the_modes_and_refuse_them_only_with_runtime_secagg(tmp_path):
    from fedloom.compose.privacy import with_privacy
    from fedloom.compose.strategy import build_strategy
    from fedloom.config import load_config
    from fedloom.errors import ConfigError
    from fedloom.stages import Staged

    for mode in ("local", "dpsgd"):
        cfg = load_config(dp_config(tmp_path, mode, mode), [])
        assert isinstance(with_privacy(cfg, build_strategy(cfg), 2, networked=True), Staged)
        cfg = load_config(dp_config(tmp_path, mode, mode, **{"runtime.secagg": {}}), [])
        with pytest.raises(ConfigError, match=rf"privacy.mode = '{mode}' .*\[runtime\.secagg\]"):
            with_privacy(cfg, build_strategy(cfg), 2, networked=True)
        assert isinstance(with_privacy(cfg, build_strategy(cfg), 2), Staged)  # the simulation


def test_the_clients_accountants_survive_an_aggregator_restart(tmp_path, procs):
    """kill -9 the aggregator after round 2's checkpoint, resume it: the clients keep their
    state, so their epsilons go on growing from where they were (a client that trained the
    killed round before the kill counts it again: conservative), and the model is the
    seeded simulation's."""
    slow = {"train.local_epochs": 3, "runtime.retry_for": 120.0}  # rounds outlast the kill
    cfg = dp_config(tmp_path, "resumed", "local", rounds=8, **slow)
    config = write_config(tmp_path / "resumed.json", cfg)
    address, directory = cfg["runtime"]["address"], run_dir(cfg)
    checkpoint = directory / "checkpoint.pt"

    def checkpoint_round() -> int:
        try:
            return int(load_checkpoint(checkpoint)["round"]) if checkpoint.exists() else 0
        except Exception:  # noqa: BLE001 - being replaced right now: look again
            return 0

    first, *clients = deploy(procs, tmp_path, cfg, noise_seed=7)
    wait_until(lambda: checkpoint_round() >= 2, 180, "round 2's checkpoint", step=0.02)
    first.popen.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert 2 <= checkpoint_round() < 8, "the run ended before the kill"
    second = procs.fedloom("aggregator 2", "server", str(config), "--address", address, "--resume")
    exp = experiment(cfg, tmp_path / "sim", noise_seed=7)
    sim = exp.run()
    for p in (second, *clients):
        assert p.wait(300) == 0, procs.logs()
    assert torch.equal(saved_params(directory, exp.federation.spec), sim.params)
    eps = [r["local_epsilon_max"] for r in read_metrics(directory)]
    expected = [r["local_epsilon_max"] for r in sim.history]
    assert len(eps) == 8 and eps == sorted(set(eps))  # never back to a fresh accountant
    assert all(e >= x for e, x in zip(eps, expected)) and eps[:2] == expected[:2]
    per_k = [Accountant(DELTA).epsilon((1.0, Z, k)) for k in range(1, 11)]
    assert set(eps) <= set(per_k)
    print(f"resumed: local_epsilon per round {eps}, uninterrupted {expected}")
