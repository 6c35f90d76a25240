"""An own loop (``fedloom.connect``) against an aggregator with ``[compression]``: the jobs are
decoded and the uploads encoded with the run's chains, the error-feedback residual kept in the
connection's client state, and the run equals its simulation bit for bit; a loop without the
chains stops with one line naming the key."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import fedloom
from examples.own_loop import client_data, make_model, train
from fedloom import Experiment, FedloomError
from fedloom.algorithms.base import RoundPlan
from fedloom.compression.link import STATE_KEY, Compression, codec_state
from fedloom.deploy.roles import aggregator
from fedloom.runtime import AggregatorServer

from .conftest import base_config, with_changes

BYTES = ("bytes_up", "bytes_down")


def compressed_config(out_dir, name: str, up: list[str], down: list[str]) -> dict[str, Any]:
    # a loop that fails ends the run (abort) rather than leaving it waiting for clients
    runtime = {"min_clients": 4, "start_timeout": 30.0, "round_timeout": 30.0}
    cfg = base_config(out_dir, name, **runtime, short_round="abort")
    cfg = with_changes(cfg, **{"data.partition": "iid"})
    cfg["compression"] = {"up": up, "down": down}
    return cfg


def own_loops(servers, cfg: dict[str, Any], manual: bool = False):
    """An in-process aggregator for ``cfg`` and four own-loop clients (threads) given the
    config's ``[compression]``; (result, connections)."""
    exp = Experiment.from_config(cfg, backend=aggregator("127.0.0.1:0"))
    server = exp.federation.backend
    servers.append(server)
    data, parts = client_data(exp.config.seed, 4)
    conns: dict[int, Any] = {}
    errors: list[BaseException] = []

    def client(cid: int) -> None:
        try:
            with fedloom.connect(
                server.address,
                client_id=cid,
                num_samples=len(parts[cid]),
                task_id="rt-test",
                compression=cfg["compression"],
                manual_client_part=manual,
            ) as fl:
                conns[cid] = fl
                train(fl, data, parts)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(4)]
    for t in threads:
        t.start()
    result = exp.run()
    server.finish()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return result, conns


def simulation(cfg: dict[str, Any], out_dir):
    exp = Experiment.from_config(with_changes(cfg, **{"output.dir": str(out_dir)}))
    return exp.run(), exp.federation.backend


@pytest.mark.parametrize(
    "up,down,manual",
    [(["q8"], [], False), (["topk:0.1", "q8", "zstd"], ["fp16"], True)],
)
def test_an_own_loop_with_compression_equals_the_simulation(tmp_path, servers, up, down, manual):
    """q8 (no residual) and top-k with error feedback: the final model, the bytes each way
    and every client's residual equal the simulation's, bit for bit (``manual_client_part``
    keeps the residual in the same state)."""
    cfg = compressed_config(tmp_path / "net", "own-packed", up, down)
    net, conns = own_loops(servers, cfg, manual)
    sim, backend = simulation(cfg, tmp_path / "sim")
    assert torch.equal(net.params, sim.params)
    assert [{k: r.get(k) for k in BYTES} for r in net.history] == [
        {k: r.get(k) for k in BYTES} for r in sim.history
    ]
    assert all(r["bytes_up"] > 0 for r in net.history)
    feedback = up[0].startswith("topk")
    for cid, conn in conns.items():
        assert (STATE_KEY in conn.client_state) == (feedback and cid in backend.states)
        if STATE_KEY in conn.client_state:
            mine = codec_state(conn.client_state[STATE_KEY]).state_dict()
            theirs = codec_state(backend.states[cid][STATE_KEY]).state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(STATE_KEY in c.client_state for c in conns.values()) == feedback


def upload_every_job(fl: Any) -> None:
    for job in fl.jobs():
        job.upload(job.model_state(), num_samples=5)


def test_an_own_loop_without_the_chains_is_told_which_key(servers):
    """The aggregator compresses one way; a connect given no [compression] stops with one
    line naming compression.down (the model it cannot read) or compression.up (the upload
    the aggregator refused), and a malformed table is refused before connecting."""
    spec, _ = fedloom.flatten_module(make_model())
    for up, down, key in ((), ("q8",), "compression.down"), (("q8",), (), "compression.up"):
        server = AggregatorServer(
            spec,
            address="127.0.0.1:0",
            poll_interval=0.02,
            task_id="rt-test",
            compression=Compression(up, down),
        )
        servers.append(server.start())
        server.distribute(1, RoundPlan([0]), torch.zeros(spec.numel))
        with (
            fedloom.connect(server.address, client_id=0, num_samples=5, task_id="rt-test") as fl,
            pytest.raises(FedloomError, match=f"this client's config has no {key}"),
        ):
            upload_every_job(fl)
        server.finish()
    with pytest.raises(ValueError, match=r"compression\.up is a list of codecs"):
        fedloom.connect("127.0.0.1:1", client_id=0, num_samples=5, compression={"up": "q8"})
    with pytest.raises(ValueError, match=r"unknown keys \['upp'\]"):
        fedloom.connect("127.0.0.1:1", client_id=0, num_samples=5, compression={"upp": ["q8"]})
