"""Over the network: a root, 2 edge relays (``fedloom node``) and 4 clients, all started by
``fedloom launch`` from one config, finish and give the hierarchical simulation's model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedloom import Experiment
from fedloom.deploy.launch import free_port
from fedloom.deploy.relay import run_node
from fedloom.errors import ConfigError
from fedloom.wire import decode


def config(out: Path) -> dict:
    ports = [free_port() for _ in range(3)]
    return {
        "name": "relay",
        "seed": 2,
        "rounds": 2,
        "data": {"dataset": "mnist5k", "num_clients": 4, "partition": "dirichlet"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": 2},
        "output": {
            "dir": out.as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
        "runtime": {"task_id": "relay-test", "retry_for": 60.0, "heartbeat_timeout": 30.0},
        "topology": {
            "nodes": [
                {"name": "root", "address": f"127.0.0.1:{ports[0]}"},
                {"name": "a", "address": f"127.0.0.1:{ports[1]}", "clients": "0-1"},
                {"name": "b", "address": f"127.0.0.1:{ports[2]}", "clients": "2-3"},
            ],
            "edges": [["a", "root"], ["b", "root"]],
            "edge_rounds": 2,
            "edge_strategy": {"clients_per_round": 1},
        },
    }


def secured(cfg: dict, certs) -> dict:
    """TLS on every link (one certificate for 127.0.0.1) and a token per client and relay."""
    cfg["runtime"] |= {
        "tls_cert": certs.server_cert,
        "tls_key": certs.server_key,
        "tls_ca": certs.ca,
        "tokens": {"0": "t0", "1": "t1", "2": "t2", "3": "t3", "a": "ta", "b": "tb"},
    }
    return cfg


@pytest.mark.parametrize("security", [False, True])
def test_launched_topology_equals_the_hierarchical_simulation(tmp_path, security, request):
    cfg = config(tmp_path / "net")
    if security:
        cfg = secured(cfg, request.getfixturevalue("certs"))
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "fedloom", "launch", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process: the same float sums
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for role in ("[root]", "[node a]", "[node b]", "[client 0]", "[client 3]"):
        assert role in done.stdout, done.stdout[-4000:]
    sim_cfg = json.loads(json.dumps(cfg))
    sim_cfg["output"]["dir"] = (tmp_path / "sim").as_posix()
    exp = Experiment.from_config(sim_cfg)
    sim = exp.run()
    data = (tmp_path / "net" / "relay" / "model.safetensors").read_bytes()
    net, _ = decode(data, exp.federation.spec)
    assert torch.equal(net, sim.params)
    lines = (tmp_path / "net" / "relay" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])  # the relays' own figures, per node, at the root
    assert set(last["nodes"]) == {"a", "b"}
    assert last["nodes"]["a"]["client_updates"] == 2  # 2 edge rounds x 1 client
    assert last["nodes"]["a"]["loss"] == sim.history[-1]["nodes"]["a"]["loss"]


def test_three_levels_over_the_network_equal_the_simulation(tmp_path):
    """root <- mid <- (a, b), clients under a and b: mid is a relay of relays."""
    cfg = config(tmp_path / "net")
    port = free_port()
    cfg["topology"]["nodes"].insert(1, {"name": "mid", "address": f"127.0.0.1:{port}"})
    cfg["topology"]["edges"] = [["mid", "root"], ["a", "mid"], ["b", "mid"]]
    cfg["strategy"]["clients_per_round"] = 1
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fedloom", "launch", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    sim_cfg = json.loads(json.dumps(cfg))
    sim_cfg["output"]["dir"] = (tmp_path / "sim").as_posix()
    exp = Experiment.from_config(sim_cfg)
    sim = exp.run()
    data = (tmp_path / "net" / "relay" / "model.safetensors").read_bytes()
    assert torch.equal(decode(data, exp.federation.spec)[0], sim.params)


def test_a_relay_with_a_wrong_token_is_refused_by_the_root(tmp_path, certs):
    cfg = secured(config(tmp_path / "net"), certs)
    cfg["runtime"]["tokens"]["a"] = "wrong-for-the-root"
    cfg["runtime"]["retry_for"] = 5.0
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(cfg))
    root_cfg = json.loads(json.dumps(cfg))
    root_cfg["runtime"]["tokens"]["a"] = "ta"  # what the root expects
    root_path = tmp_path / "root.json"
    root_path.write_text(json.dumps(root_cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fedloom = [sys.executable, "-m", "fedloom"]
    procs = [
        subprocess.Popen(
            [*fedloom, "server", str(root_path)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [*fedloom, "node", str(path), "--name", "a"],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        procs += [
            subprocess.Popen([*fedloom, "client", str(path), "--server",
                              cfg["topology"]["nodes"][1]["address"], "--client-id", str(c)],
                             env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
            for c in (0, 1)
        ]  # fmt: skip
        out, _ = procs[1].communicate(timeout=120)
        assert procs[1].returncode != 0
        assert "bad token" in out, out[-3000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_relay_needs_a_topology_node_with_clients(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ConfigError, match="no node 'zzz'"):
        run_node(cfg, name="zzz")
    with pytest.raises(ConfigError, match="is the root"):
        run_node(cfg, name="root")
    del cfg["topology"]
    with pytest.raises(ConfigError, match="no \\[topology\\]"):
        run_node(cfg, name="a")
