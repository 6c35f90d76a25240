"""Distributed DP over the network: each client noises its own masked update.

The clients clip their deltas, add their Skellam shares (their own secret randomness; a
client-local seed here, for a deterministic test) and mask; the aggregator unmasks only the
noisy sum and accounts it as the simulation does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedloom import FedAvg, Federation, FedloomError, ParamSpec
from fedloom.privacy.clientnoise import ClientNoise
from fedloom.privacy.ddp_noise import SkellamShares
from fedloom.privacy.secagg import MaskedInput, SecAggConfig
from fedloom.runtime import AggregatorServer, RuntimeClient, secagg_wire
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.secagg_client import SecAggSession, clip_l2
from fedloom.runtime.secagg_round import SecAggSettings

from .conftest import (
    base_config,
    free_port,
    read_metrics,
    run_dir,
    simulate,
    with_changes,
    write_config,
)
from .test_secagg_net import Recorder, secure_run, session_class, task_of

Z, CLIP = 1.0, 0.5


def seeded(rec: Recorder) -> type[SecAggSession]:
    """A recording session whose noise comes from a client-local seed (its client id)."""
    base = session_class(rec)

    class Seeded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, noise_seed=100 + int(args[1]["client_id"]))

    return Seeded


def test_the_sum_the_aggregator_unmasks_carries_the_configured_noise_and_no_client_leaks(
    servers, client_threads
):
    """6 clients, d = 12,291. The released sum minus the plaintext sum of the clipped deltas
    is the noise: its variance must be ``(z * sens * step)^2``, sens = C / step + sqrt(d)
    levels (the sample variance of d draws has relative std sqrt((2 + kurtosis) / d) =
    0.0128; Skellam's excess kurtosis 1/variance is ~1e-9; stochastic rounding adds at most
    m/4 levels^2, a 1e-9 share), so 5 sigma is 0.064. Every masked vector is uncorrelated
    with every delta (std 1/sqrt(d) = 0.009, bound 0.05)."""
    task = task_of(hidden=1024)
    noise = SkellamShares(Z, CLIP)
    settings = SecAggSettings(clipping_range=CLIP, stage_timeout=30, noise=noise)
    rec = Recorder()
    fed, server, initial = secure_run(
        servers, client_threads, task, settings, session=seeded(rec), recorder=rec
    )
    m, d = 6, initial.numel()
    assert d == 12_291 and len(rec.deltas) == m
    clipped = [clip_l2(delta, CLIP) for delta in rec.deltas.values()]
    released = (fed.params.double() - initial.double()).numpy() * m
    got = released - np.sum(clipped, axis=0)
    cfg = SecAggConfig(m, d, 5, 3, clipping_range=CLIP)
    expected = (Z * noise.sensitivity(cfg) * cfg.step) ** 2
    tolerance = 5 * math.sqrt(2 / d) + m / (4 * noise.sensitivity(cfg) ** 2)
    ratio = float(got.var()) / expected
    print(f"noise variance / configured: {ratio:.4f} (tolerance {tolerance:.4f})")
    assert abs(ratio - 1) < tolerance, ratio
    assert abs(float(got.mean())) < 5 * math.sqrt(expected / d)
    vectors = [msg.vector for _, msg in rec.received if isinstance(msg, MaskedInput)]
    assert len(vectors) == m
    for v in vectors:
        for delta in rec.deltas.values():
            assert abs(np.corrcoef(v.astype(np.float64), delta)[0, 1]) < 0.05
    assert server.secagg is not None and not server.tally.total, server.tally.total


def test_clients_refuse_distributed_dp_parameters_that_make_no_sense():
    good = dict(
        num_clients=6, vector_length=10, num_shares=5, reconstruction_threshold=3,
        clipping_range=1.0, quantization_range=256, modulus=1 << 32, session=1,
        graph_seed=7, index=0, stage_timeout_s=5.0, distributed_dp=True, dp_clip_norm=1.0,
        dp_noise_multiplier=1.0, dp_dropout_tolerance=0.0,
    )  # fmt: skip
    params = pb.SecAggParams(**good)
    config, _ = secagg_wire.params_from_proto(params, 10)
    assert secagg_wire.noise_from_proto(params, config) == SkellamShares(1.0, 1.0)
    plain = {"distributed_dp": False, "dp_clip_norm": 0.0, "dp_noise_multiplier": 0.0}
    assert secagg_wire.noise_from_proto(pb.SecAggParams(**{**good, **plain}), config) is None
    for bad in (
        {"dp_noise_multiplier": 0.0},  # says distributed DP, adds no noise
        {"dp_noise_multiplier": float("nan")},
        {"dp_noise_multiplier": float("inf")},
        {"dp_clip_norm": 0.0},
        {"dp_clip_norm": float("inf")},
        {"dp_dropout_tolerance": 1.0},
        {"dp_noise_multiplier": 1e9},  # the noisy sum would wrap the modulus
        {"distributed_dp": False},  # DP values in a round without DP
    ):
        p = pb.SecAggParams(**{**good, **bad})
        with pytest.raises(secagg_wire.SecAggRefused, match="malformed"):
            secagg_wire.noise_from_proto(p, config)


def test_distributed_dp_over_processes_records_the_simulations_epsilon_and_stops_on_target(
    tmp_path, procs
):
    """``fedloom server`` and 4 ``fedloom client`` processes, 3 clients a round: each round's
    record carries the epsilon the simulation of the same config records, and a
    target_epsilon between the second and third rounds' stops both after round 2."""
    address = f"127.0.0.1:{free_port()}"
    privacy = {"mode": "distributed", "noise_multiplier": 1.0, "clip_norm": 0.5}
    cfg = base_config(tmp_path / "net", "ddp", address=address, min_clients=4)
    cfg = with_changes(cfg, privacy=privacy, rounds=3)
    full, _ = simulate(cfg, tmp_path / "sim-full")
    eps = [r["epsilon"] for r in full.history]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    cfg = with_changes(cfg, **{"privacy.target_epsilon": (eps[1] + eps[2]) / 2})
    sim, _ = simulate(cfg, tmp_path / "sim")
    config = write_config(tmp_path / "ddp.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    clients = [
        procs.fedloom(
            f"client {i}", "client", str(config), "--server", address, "--client-id", str(i)
        )
        for i in range(4)
    ]
    assert server.wait(240) == 0, procs.logs()
    for c in clients:
        assert c.wait(60) == 0, procs.logs()
    records = read_metrics(run_dir(cfg))
    print("epsilon per round, network:", [r["epsilon"] for r in records])
    print("epsilon per round, simulation:", [r["epsilon"] for r in sim.history])
    assert len(records) == len(sim.history) == 2
    for net, simulated in zip(records, sim.history, strict=True):
        assert net["epsilon"] == pytest.approx(simulated["epsilon"], rel=1e-12)
        assert net["noise_multiplier_effective"] == pytest.approx(1.0, rel=1e-12)
    assert "securely aggregated 3 of 3 clients" in server.output()


def test_a_client_refuses_a_round_that_says_distributed_dp_without_noise(
    servers, client_threads, monkeypatch
):
    """An aggregator whose instructions say distributed DP with noise multiplier 0: every
    client refuses the parameters before sending anything (its run ends with the reason),
    so the aggregator receives no stage message and the round is skipped."""
    from fedloom.runtime import secagg_round

    real = secagg_round.params_to_proto

    def no_noise(*args: Any, **kwargs: Any) -> pb.SecAggParams:
        params = real(*args, **kwargs)
        params.dp_noise_multiplier = 0.0
        return params

    monkeypatch.setattr(secagg_round, "params_to_proto", no_noise)
    settings = SecAggSettings(clipping_range=CLIP, stage_timeout=2, noise=SkellamShares(Z, CLIP))
    rec = Recorder()
    fed, _server, initial = secure_run(
        servers, client_threads, task_of(), settings, recorder=rec, short_round="skip",
        round_timeout=3,
    )  # fmt: skip
    assert rec.received == [] and "skipped" in fed.history[0]
    assert fed.params.equal(initial)
    assert len(client_threads.errors) == 6
    assert all("noise_multiplier must be a finite number > 0" in str(e)
               for e in client_threads.errors.values())  # fmt: skip


def own_config(z: float, clip: float = CLIP) -> dict[str, float]:
    """What ``privacy.mode = "distributed"`` with ``z`` and ``clip`` fixes (defaults else)."""
    from fedloom.config import load_config
    from fedloom.deploy.roles import client_noise

    privacy = {"mode": "distributed", "noise_multiplier": z, "clip_norm": clip}
    cfg = load_config(with_changes(base_config("/tmp", "ddp-own"), privacy=privacy))
    distributed = client_noise(cfg).distributed
    assert distributed is not None
    return distributed


def test_a_client_refuses_parameters_its_own_config_does_not_name_before_sending():
    """A client whose config says z = 1: parameters with z = 0.25, or without distributed
    DP, are refused in one line naming the key before a message is sent."""
    expected = own_config(Z)
    assert expected == {
        "noise_multiplier": Z, "clip_norm": CLIP, "dropout_tolerance": 0.0,
        "clipping_range": CLIP, "quantization_range": 2**16, "modulus": 2**32,
    }  # fmt: skip
    good = dict(
        num_clients=6, vector_length=10, num_shares=5, reconstruction_threshold=3,
        clipping_range=CLIP, quantization_range=2**16, modulus=1 << 32, session=1,
        graph_seed=7, index=0, stage_timeout_s=5.0, distributed_dp=True, dp_clip_norm=CLIP,
        dp_noise_multiplier=Z, dp_dropout_tolerance=0.0,
    )  # fmt: skip
    sent: list[Any] = []
    header = {"task_id": "t", "client_id": "3", "token": ""}
    plain = {"distributed_dp": False, "dp_clip_norm": 0.0, "dp_noise_multiplier": 0.0}
    for changes, line in (
        ({"dp_noise_multiplier": 0.25}, r"noise_multiplier = 0\.25, this client's config 1\.0"),
        ({"dp_clip_norm": 2.0}, r"clip_norm = 2\.0, this client's config 0\.5"),
        ({"clipping_range": 4.0}, r"clipping_range = 4\.0, this client's config 0\.5"),
        (plain, r"no distributed DP \(distributed_dp = false\)"),
    ):
        params = pb.SecAggParams(**{**good, **changes})
        with pytest.raises(FedloomError, match=f"client 3: .*{line}"):
            SecAggSession(sent.append, header, params, 10, expected=expected)
    assert sent == []
    session = SecAggSession(sent.append, header, pb.SecAggParams(**good), 10, expected=expected)
    assert session.noise == SkellamShares(Z, CLIP)
    plain_session = SecAggSession(sent.append, header, pb.SecAggParams(**{**good, **plain}), 10)
    assert plain_session.noise is None  # a client without the mode takes a plain round


def one_round_of_configured_clients(
    task, servers, client_threads, settings=None, rec=None
) -> tuple[Federation, list[str]]:
    """One round of an aggregator (secure when ``settings``) with six RuntimeClients whose
    config says distributed DP at z = Z: (the federation, the clients' errors)."""

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(
            spec, address="127.0.0.1:0", poll_interval=0.02, min_clients=task.num_clients,
            secagg=settings, round_timeout=3,
        )  # fmt: skip
        if rec is not None:
            assert server.secagg is not None
            server.secagg.on_message = lambda cid, m: rec.received.append((cid, m))
        servers.append(server)
        return server.start()

    fed = Federation(task, FedAvg(fraction=1.0), make, rounds=1, seed=0, short_round="skip")
    for cid in range(task.num_clients):
        own = ClientNoise(100 + cid, distributed=own_config(Z))
        client_threads.start(
            RuntimeClient(task, fed.backend.address, cid, retry_for=10, noise=own)
        )
    fed.run()
    fed.backend.finish()
    client_threads.join(30)
    return fed, [str(e) for e in client_threads.errors.values()]


@pytest.mark.parametrize("z, runs", [(Z, True), (0.25, False)])
def test_a_client_whose_config_matches_runs_and_one_that_does_not_refuses(
    servers, client_threads, z, runs
):
    """Six RuntimeClients carrying their config's expectation (ClientNoise.distributed): with
    the aggregator's z the round runs; with z = 0.25 every client refuses, naming the key, and
    the aggregator receives no stage message."""
    task, rec = task_of(), Recorder()
    settings = SecAggSettings(clipping_range=CLIP, stage_timeout=2, noise=SkellamShares(z, CLIP))
    fed, errors = one_round_of_configured_clients(task, servers, client_threads, settings, rec)
    if runs:
        assert not errors and "skipped" not in fed.history[0], errors
        masked = [m for _, m in rec.received if isinstance(m, MaskedInput)]
        assert len(masked) == task.num_clients  # every client's noised, masked input
    else:
        assert rec.received == [] and "skipped" in fed.history[0]
        assert len(errors) == task.num_clients
        assert all("noise_multiplier = 0.25, this client's config 1.0" in e for e in errors)


def test_a_distributed_dp_client_refuses_a_round_in_the_clear(servers, client_threads):
    """An aggregator that simply skips secure aggregation would receive the update without its
    noise share: a client whose config says distributed DP refuses such a round before
    training, and the aggregator receives nothing from it."""
    task = task_of()
    fed, errors = one_round_of_configured_clients(task, servers, client_threads)
    assert "skipped" in fed.history[0] and len(errors) == task.num_clients
    assert all("without secure aggregation" in e for e in errors), errors
