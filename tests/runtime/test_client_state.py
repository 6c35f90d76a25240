"""``fedloom client --state-file``: a client's state (privacy accountant, compression residual)
across a restart of the client process, checked against a run whose client never restarted.

Real ``fedloom server`` / ``fedloom client`` processes; a client is killed with SIGKILL after
a round and started again with the same flags. Without the state file the same restart shows
what the file is for: the accountant starts again from zero, the residual is lost.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_task

from fedloom import Experiment, FedAvg, Federation
from fedloom.compose.task import load_task
from fedloom.config import load_config
from fedloom.deploy.roles import aggregator
from fedloom.errors import CheckpointError, ConfigError
from fedloom.privacy import Accountant
from fedloom.privacy.clientdp import keyed_seed
from fedloom.privacy.clientnoise import ClientNoise
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.runtime.clientstate import KEYS, MAGIC, ClientStateFile
from fedloom.runtime.coding import ClientCoding
from fedloom.simulation.engine import InProcessClients

from .conftest import (
    ClientThreads,
    base_config,
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    wait_until,
    with_changes,
    write_config,
)

Z, CLIP, DELTA = 1.0, 0.5, 1e-5
#: a restarted process needs seconds to import torch: the aggregator keeps waiting for it
PATIENT = {"runtime.heartbeat_timeout": 300.0, "runtime.retry_for": 120.0}


def saved_round(path: Path, cfg: dict[str, Any], cid: int = 0) -> int:
    """The round a client's state file was written after (0: none yet, or being replaced)."""
    try:
        f = ClientStateFile(path, task_id="rt-test", client_id=cid, run=cfg["name"])
    except (CheckpointError, ConfigError):
        return 0
    return 0 if f.loaded is None else int(f.loaded["round"])


def kill_at_round(procs, victims: dict[str, tuple], k: int) -> tuple[dict[str, Any], dict]:
    """SIGKILL each victim ``name: (proc, args, cfg, state file or None)`` as soon as its run
    recorded round ``k`` (all watched at once: a run must not end first), and start it again
    with ``args``. Returns the restarted processes and the round each state file held at the
    kill, by name."""
    restarted: dict[str, Any] = {}
    at_kill: dict[str, int] = {}

    def step() -> bool:
        for name, (proc, args, cfg, state) in victims.items():
            if name not in restarted and len(read_metrics(run_dir(cfg))) >= k:
                assert proc.popen.poll() is None, f"{name} ended before the kill:\n{procs.logs()}"
                proc.popen.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                at_kill[name] = 0 if state is None else saved_round(state, cfg)
                restarted[name] = procs.fedloom(f"{name} (restarted)", *args)
        return len(restarted) == len(victims)

    wait_until(step, 240, f"round {k} of {sorted(victims)}", step=0.02)
    return restarted, at_kill


# -- (1) the privacy accountant ------------------------------------------------------------------
def test_a_restarted_client_goes_on_with_its_accountant_only_with_its_state_file(tmp_path, procs):
    """One local-DP client, killed after round 2 and restarted: with ``--state-file`` its
    local_epsilon per round is the uninterrupted run's (eps after 1..5 participations);
    without, it reports a first participation's epsilon again after the restart."""
    k, rounds = 2, 5
    per_k = [Accountant(DELTA).epsilon((1.0, Z, n)) for n in range(1, rounds + 2)]
    runs: dict[str, Any] = {}
    for kept in (True, False):
        name = "kept" if kept else "lost"
        cfg = base_config(tmp_path / "net", name, address=f"127.0.0.1:{free_port()}")
        cfg = with_changes(
            cfg,
            rounds=rounds,
            **{"data.num_clients": 1, "strategy.clients_per_round": 1, "runtime.min_clients": 1},
            **{"privacy.mode": "local", "privacy.noise_multiplier": Z, "privacy.clip_norm": CLIP},
            **{"train.local_epochs": 10},  # a round outlasts the kill
            **PATIENT,
        )
        config = write_config(tmp_path / f"{name}.json", cfg)
        state = tmp_path / f"{name}-client0.state"
        args = ["client", str(config), "--client-id", "0"]
        args += ["--state-file", str(state)] if kept else []
        server = procs.fedloom(f"aggregator {name}", "server", str(config))
        runs[name] = (cfg, state, args, server, procs.fedloom(f"client {name}", *args))
    victims = {
        name: (client, args, cfg, state) for name, (cfg, state, args, _, client) in runs.items()
    }
    restarted, at_kill = kill_at_round(procs, victims, k)
    for name, (*_, server, _) in runs.items():
        assert server.wait(300) == 0, procs.logs()
        assert restarted[name].wait(60) == 0, procs.logs()
    eps = {name: [r["local_epsilon_max"] for r in read_metrics(run_dir(cfg))]
           for name, (cfg, *_) in runs.items()}  # fmt: skip
    print(f"\nlocal_epsilon per round: {eps}; state file at the kill: round {at_kill['kept']}")
    s = at_kill["kept"]
    assert at_kill["lost"] == 0 and s >= k
    # the usual case: killed before it saved another round, or after that round's upload
    # arrived; else the upload of round s died with the process, the aggregator handed round s
    # out again and the client counted it twice: more epsilon, never less
    assert eps["kept"] in (per_k[:rounds], per_k[: s - 1] + per_k[s : rounds + 1])
    if s == k:
        assert eps["kept"] == per_k[:rounds]
    assert eps["lost"][:k] == per_k[:k] and per_k[0] in eps["lost"][k:]  # from zero again
    assert eps["lost"] != per_k[:rounds]
    saved = ClientStateFile(runs["kept"][1], task_id="rt-test", client_id=0, run="kept").loaded
    assert saved is not None and saved["round"] == rounds
    assert saved["state"]["local_dp"]["participations"] >= rounds


# -- (2) the compression residual ------------------------------------------------------------------
def test_a_restarted_client_with_its_state_file_keeps_the_run_bit_for_bit(tmp_path, procs):
    """top-k with error feedback, two clients, client 0 killed after round 2 and restarted:
    with its state file (the residual, and the one from before its last round, for a round
    the aggregator hands out again) the run equals the simulation bit for bit; without, the
    residual is lost and the model differs."""
    k = 2
    runs: dict[str, Any] = {}
    for kept in (True, False):
        name = "packed-kept" if kept else "packed-lost"
        cfg = base_config(tmp_path / "net", name, address=f"127.0.0.1:{free_port()}")
        cfg = with_changes(
            cfg,
            rounds=5,
            **{"data.num_clients": 2, "strategy.clients_per_round": 2, "runtime.min_clients": 2},
            **{"model.name": "mlp", "compression.up": ["topk:0.1", "q8"]},
            **PATIENT,
        )
        config = write_config(tmp_path / f"{name}.json", cfg)
        server = procs.fedloom(f"aggregator {name}", "server", str(config))
        clients = []
        for cid in (0, 1):
            args = ["client", str(config), "--client-id", str(cid)]
            if kept:
                args += ["--state-file", str(tmp_path / f"{name}-client{cid}.state")]
            clients.append((args, procs.fedloom(f"client {cid} {name}", *args)))
        runs[name] = (cfg, server, clients)
    victims = {
        name: (clients[0][1], clients[0][0], cfg, None) for name, (cfg, _, clients) in runs.items()
    }
    restarted, _ = kill_at_round(procs, victims, k)
    sim, spec = simulate(runs["packed-kept"][0], tmp_path / "sim")  # meanwhile, in this process
    for name, (cfg, server, clients) in runs.items():
        assert server.wait(300) == 0, procs.logs()
        for p in (restarted[name], clients[1][1]):
            assert p.wait(60) == 0, procs.logs()
        assert [r["round"] for r in read_metrics(run_dir(cfg))] == [1, 2, 3, 4, 5]
    kept, lost = (saved_params(run_dir(runs[n][0]), spec) for n in ("packed-kept", "packed-lost"))
    assert torch.equal(kept, sim.params)
    assert not torch.equal(lost, sim.params)  # the residual matters: the test can fail
    keys = ("bytes_up", "bytes_down", "accuracy")
    got = [{k: r[k] for k in keys} for r in read_metrics(run_dir(runs["packed-kept"][0]))]
    assert got == [{k: r[k] for k in keys} for r in sim.history]


class Killed(Exception):
    """What ends a client that "dies" between saving its state and sending its update."""


class DiesBeforeUpload(RuntimeClient):
    """A client whose process, to the aggregator, dies after it trained round ``DIES_AT`` and
    saved its state, before the update leaves: the window the file's timing is about."""

    DIES_AT = 2

    def _send(self, ins, *args, **kwargs):  # type: ignore[no-untyped-def]
        if ins.round == self.DIES_AT:
            raise Killed(f"client {self.client_id}: gone before round {ins.round}'s upload")
        return super()._send(ins, *args, **kwargs)


@pytest.mark.parametrize("before", [True, False], ids=["as-saved", "without-before"])
def test_a_round_saved_but_never_sent_is_sent_again_from_the_residual_before_it(
    tmp_path, servers, before
):
    """Six clients, top-k with error feedback; client 0 dies after round 2's save, before its
    upload, and a new client 0 starts from the file: the aggregator hands it round 2 again,
    which it encodes from the residual it had *before* round 2 (kept in the file), so the run
    is the simulation's bit for bit. Dropping that entry from the file (the control) encodes
    the re-sent round from the residual after it, and the run differs."""
    from .test_compression_net import chains, simulation

    up, down, rounds = ("topk:0.1", "q8"), (), 4
    sim, _ = simulation(up, down, rounds=rounds)
    task = make_tiny_task()

    def make(spec):
        server = AggregatorServer(
            spec,
            address="127.0.0.1:0",
            poll_interval=0.02,
            min_clients=6,
            compression=chains(up, down),
            heartbeat_timeout=120.0,
        )
        servers.append(server)
        return server.start()

    fed = Federation(task, FedAvg(fraction=1.0), make, rounds=rounds, seed=0)
    address = fed.backend.address  # type: ignore[attr-defined]

    def state(cid: int) -> ClientStateFile:
        return ClientStateFile(tmp_path / f"{cid}.state", task_id="fedloom", client_id=cid, run="t")

    def client(cls: type[RuntimeClient], cid: int, f: ClientStateFile) -> RuntimeClient:
        return cls(task, address, cid, compression=chains(up, down), state_file=f)

    threads = ClientThreads()
    first = client(DiesBeforeUpload, 0, state(0))
    threads.start(first)
    for cid in range(1, 6):
        threads.start(client(RuntimeClient, cid, state(cid)))
    result: dict[str, Any] = {}
    loop = threading.Thread(target=lambda: result.update(r=fed.run()), daemon=True)
    loop.start()
    wait_until(lambda: 0 in threads.errors, 60, "client 0's death before its upload")
    assert isinstance(threads.errors.pop(0), Killed)
    again = state(0)
    assert again.loaded is not None and again.loaded["round"] == 2
    assert "codec" in again.loaded["state"] and again.loaded["before"] is not None
    if not before:
        again.loaded["before"] = None
    threads.start(client(RuntimeClient, 0, again))
    loop.join(120)
    fed.backend.finish()  # type: ignore[attr-defined]
    threads.join(60)
    assert not threads.errors and "r" in result, threads.errors
    assert [r["round"] for r in result["r"].history] == list(range(1, rounds + 1))
    assert torch.equal(result["r"].params, sim.params) == before


# -- (3) whose file, and damage ------------------------------------------------------------------
def written_state(tmp_path: Path, client_id: int = 0, rnd: int = 3) -> tuple[Path, Any]:
    """A state file as a client writes it: a real engine whose client trained a round of a
    tiny task under top-k (a residual in its state)."""
    from fedloom.algorithms.base import RoundPlan
    from fedloom.compression.link import STATE_KEY, Compression

    comp = Compression(("topk:0.2",), (), seed=0)
    engine = InProcessClients(make_tiny_task(), 5)
    coding = ClientCoding(client_id, comp)
    engine.distribute(rnd, RoundPlan([client_id]), engine.flat.clone())
    update = next(engine.collect())
    coding.update(rnd, engine, engine.flat.clone(), update)
    assert STATE_KEY in engine.states[client_id]
    path = tmp_path / f"client{client_id}.state"
    ClientStateFile(path, task_id="task-a", client_id=client_id, run="run-a").save(
        engine, coding, rnd
    )
    return path, engine


def test_a_state_file_round_trips_into_a_fresh_engine(tmp_path):
    path, engine = written_state(tmp_path)
    f = ClientStateFile(path, task_id="task-a", client_id=0, run="run-a")
    fresh, coding = InProcessClients(make_tiny_task(), 5), ClientCoding(0)
    assert f.restore(fresh, coding) == 3
    mine, theirs = fresh.states[0], engine.states[0]
    assert mine.keys() == theirs.keys()
    for key in mine:
        a, b = mine[key], theirs[key]
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert coding._before is not None and coding._before[0] == 3 and coding._again
    assert f.restore(fresh, coding) is None  # once: a later check-in keeps the live state


@pytest.mark.parametrize(
    "who,named",
    [
        ({"client_id": 1}, "client id 0, not this client's 1"),
        ({"task_id": "task-b"}, "task id 'task-a', not this client's 'task-b'"),
        ({"run": "run-b"}, "run 'run-a', not this client's 'run-b'"),
    ],
)
def test_a_state_file_of_another_client_or_run_is_refused(tmp_path, who, named):
    path, _ = written_state(tmp_path)
    identity = {"task_id": "task-a", "client_id": 0, "run": "run-a", **who}
    with pytest.raises(ConfigError, match="--state-file") as e:
        ClientStateFile(path, **identity)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_a_state_file_of_another_run_seed_is_refused_at_check_in(tmp_path):
    path, _ = written_state(tmp_path)
    f = ClientStateFile(path, task_id="task-a", client_id=0, run="run-a")
    with pytest.raises(
        ConfigError, match=r"--state-file .* seed 5, this aggregator's run seed is 6"
    ):
        f.restore(InProcessClients(make_tiny_task(), 6), ClientCoding(0))


def test_a_damaged_state_file_is_one_clear_error(tmp_path):
    path, _ = written_state(tmp_path)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    damaged = {
        "truncated": good[:-100],
        "a flipped bit": bytes(flipped),
        "a truncated header": good[: len(MAGIC) - 3],
        "empty": b"",
        "not ours": b"PK\x03\x04" + good[4:],
        "appended bytes": good + b"\0",
    }
    for what, data in damaged.items():
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=r"^--state-file ") as e:
            ClientStateFile(path, task_id="task-a", client_id=0, run="run-a")
        assert "\n" not in str(e.value), what
        print(f"{what}: {e.value}")


def test_the_client_command_refuses_another_clients_state_file(tmp_path, procs):
    """``fedloom client --client-id 1 --state-file <client 0's>`` exits 2 before it dials
    (nothing listens at the address) with one line naming the flag."""
    cfg = base_config(tmp_path / "net", "whose", address=f"127.0.0.1:{free_port()}")
    config = write_config(tmp_path / "whose.json", cfg)
    path = tmp_path / "run" / "client0.state"
    # client 0's file of this very run, as its client writes it
    _, engine = written_state(tmp_path)
    ClientStateFile(path, task_id="rt-test", client_id=0, run="whose").save(
        engine, ClientCoding(0), 1
    )
    args = ["client", str(config), "--client-id", "1", "--state-file", str(path)]
    p = procs.fedloom("client 1", *args)
    assert p.wait(120) == 2, procs.logs()
    lines = [line for line in p.output().splitlines() if line.startswith("fedloom")]
    assert lines == [
        f"fedloom: error: --state-file {path} belongs to client id 0, not this client's 1: "
        "give this client's own state file, or a new path"
    ], p.output()


# -- (4) no secret in the file ---------------------------------------------------------------------
def _walk(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *(x for v in obj.values() for x in _walk(v))]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in _walk(v)]
    return [obj]


def test_the_state_file_holds_no_secret_noise_seed(tmp_path):
    """A local-DP client with a secret seed (in this process, so the test can know it) trains
    two rounds against a real aggregator: its file holds the identity, the round and the
    accountant; neither the secret nor a seed derived from it appears anywhere in it."""
    cfg = base_config(tmp_path / "net", "secret", address=f"127.0.0.1:{free_port()}")
    cfg = with_changes(
        cfg,
        rounds=2,
        **{"data.num_clients": 1, "strategy.clients_per_round": 1, "runtime.min_clients": 1},
        **{"privacy.mode": "local", "privacy.noise_multiplier": Z, "privacy.clip_norm": CLIP},
    )
    exp = Experiment.from_config(cfg, backend=aggregator())
    task = load_task(load_config(cfg, []))
    path = tmp_path / "client0.state"
    noise = ClientNoise()  # a secret from `secrets`
    client = RuntimeClient(
        task,
        cfg["runtime"]["address"],
        0,
        task_id="rt-test",
        noise=noise,
        state_file=ClientStateFile(path, task_id="rt-test", client_id=0, run="secret"),
    )
    errors: list[BaseException] = []

    def train() -> None:
        try:
            client.run()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=train, daemon=True)
    t.start()
    try:
        exp.run()
    finally:
        exp.federation.backend.finish()  # type: ignore[attr-defined]
        t.join(30)
        exp.federation.backend.stop()  # type: ignore[attr-defined]
    assert not errors and not t.is_alive()
    saved = ClientStateFile(path, task_id="rt-test", client_id=0, run="secret").loaded
    assert saved is not None and sorted(saved) == sorted(KEYS)
    assert saved["round"] == 2 and saved["before"] is None  # no compression, no residual
    assert list(saved["state"]) == ["local_dp"]
    assert sorted(saved["state"]["local_dp"]) == ["epsilon", "participations", "runs"]
    secret = noise._seed
    derived = {keyed_seed(secret, "local_dp", r, 0) for r in (1, 2)}
    values = _walk(saved)
    assert all(isinstance(v, str | int | float | None) for v in values)  # no tensor, no bytes
    assert secret not in values and not derived & set(values)
    raw = path.read_bytes()
    for s in (secret, *derived):
        assert s.to_bytes(8, "little") not in raw and str(s).encode() not in raw
