"""``fedloom launch``: one aggregator and N-1 data holders as local processes.

Each process gets the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``
variables torchrun would give it, so the same config or script runs under either. Output
lines are prefixed with the process's role; Ctrl-C (or any process failing) ends them all.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..compose.factory import custom_task, import_factory
from ..config import load_config
from ..errors import ConfigError
from ..topology import Topology


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# What a deployment script reads or calls to learn its role; a script with none of them would
# run the same program in every process (N simulations labelled "aggregator" and "client").
ROLE_MARKERS = ("RANK", "role_from_env", "run_server", "run_client", "RuntimeClient",
                "AggregatorServer", "fedloom.deploy", "fedloom.runtime")  # fmt: skip


def check_script(target: str) -> None:
    """Refuse a ``.py`` script that never asks for its role: under ``fedloom launch`` it
    would start ``nproc`` copies of one program, none of them an aggregator or a client."""
    text = Path(target).read_text(encoding="utf-8", errors="replace")
    if not any(marker in text for marker in ROLE_MARKERS):
        raise ConfigError(
            f"{target} is not a deployment script: it never reads its role (RANK, or "
            "fedloom.deploy.roles.role_from_env / run_server / run_client), so every process "
            "would run the same program. Launch a config instead (fedloom launch --nproc N "
            "CONFIG), or run the script itself"
        )


def check_clients(nproc: int, num_clients: int, per_round: int | None, allow: bool) -> None:
    """Refuse, unless ``allow``, a launch whose client processes are fewer than the task's
    clients: the aggregator samples only among those that check in, so it would train a
    different federation from ``fedloom run`` of the same config."""
    started = nproc - 1
    if allow or num_clients <= started:
        return
    each = f" ({per_round} per round)" if per_round is not None else ""
    raise ConfigError(
        f"the config's task has {num_clients} clients{each}, but --nproc {nproc} starts "
        f"{started} client processes (ids 0-{started - 1}): the aggregator would train only "
        f"those {started}, a different federation from `fedloom run` of this config. Give "
        f"--nproc {num_clients + 1}, fewer clients (--set data.num_clients={started}), or "
        "--allow-fewer-clients to run with these anyway"
    )


def command_for(target: str, args: Sequence[str]) -> list[str]:
    """A ``.py`` script runs as is; anything else is a config for ``fedloom start``."""
    if target.endswith(".py"):
        return [sys.executable, target, *args]
    return [sys.executable, "-m", "fedloom", "start", target, *args]


def launch(
    nproc: int,
    target: str,
    args: Sequence[str] = (),
    *,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    grace: float = 10.0,
    out: TextIO | None = None,
    allow_fewer_clients: bool = False,
    dashboard: str | None = None,
) -> int:
    """Run ``nproc`` processes; returns 0 when the aggregator and every client succeeded.
    A config whose task has more clients than ``nproc - 1`` is refused unless
    ``allow_fewer_clients`` (:func:`check_clients`); a script must ask for its role.
    ``dashboard`` (HOST:PORT, a config only) has the aggregator serve the live page."""
    if nproc < 2:
        raise ConfigError(f"--nproc must be >= 2 (an aggregator and a client), got {nproc}")
    if not Path(target).is_file():
        raise ConfigError(f"{target}: no such file")
    if target.endswith(".py"):
        check_script(target)
        if dashboard is not None:
            raise ConfigError("--dashboard serves a config's run; a script starts its own")
    else:  # one error line now, not one from every process
        cfg = load_config(target, _overrides(args))
        num_clients = cfg.data.num_clients
        if cfg.task is not None:
            import_factory(cfg.task)
            num_clients = custom_task(cfg).num_clients
        per_round = cfg.strategy.clients_per_round
        check_clients(nproc, num_clients, per_round, allow_fewer_clients)
    out = out or sys.stdout
    port = master_port or free_port(master_addr)
    aggregator_port = free_port(master_addr)
    commands = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(port),
            FEDLOOM_PORT=str(aggregator_port),
            PYTHONUNBUFFERED="1",
        )
        label = "aggregator" if rank == 0 else f"client {rank - 1}"
        extra = ["--dashboard", dashboard] if rank == 0 and dashboard is not None else []
        commands.append((label, command_for(target, [*args, *extra]), env))
    return _run_all(commands, grace, out)


def launch_topology(
    config: str,
    args: Sequence[str] = (),
    *,
    grace: float = 10.0,
    out: TextIO | None = None,
    dashboard: str | None = None,
) -> int:
    """Start a config's whole ``[topology]`` here: the root (``fedloom server``), every relay
    (``fedloom node``) and every client under a relay (``fedloom client``), at the addresses
    the topology gives; logs prefixed by role, all ended together as :func:`launch` does.
    ``dashboard`` (HOST:PORT) has the root serve the live page."""
    if not Path(config).is_file():
        raise ConfigError(f"{config}: no such file")
    overrides = list(args)  # --set K=V pairs, passed on to every process
    cfg = load_config(config, _overrides(args))
    if cfg.task is not None:  # one error line now, not one from every process
        import_factory(cfg.task)
    if cfg.topology is None:
        raise ConfigError(f"{config} has no [topology]: give --nproc (1 aggregator + clients)")
    topology = Topology.from_config(cfg.topology)
    topology.validate(network=True)
    fedloom = [sys.executable, "-m", "fedloom"]
    page = ["--dashboard", dashboard] if dashboard is not None else []
    roles: list[tuple[str, list[str]]] = [
        ("root", [*fedloom, "server", config, *overrides, *page])
    ]
    for name, node in topology.nodes.items():
        if not topology.parents(name):
            continue
        roles.append((f"node {name}", [*fedloom, "node", config, "--name", name, *overrides]))
        for cid in node.clients:
            cmd = [*fedloom, "client", config, "--server", str(node.address), "--client-id"]
            roles.append((f"client {cid}", [*cmd, str(cid), *overrides]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return _run_all([(label, cmd, env) for label, cmd in roles], grace, out)


def _overrides(args: Sequence[str]) -> list[str]:
    """The ``--set K=V`` values among the arguments passed on to every process."""
    return [v for k, v in itertools.pairwise(args) if k == "--set"]


def _run_all(
    commands: list[tuple[str, list[str], dict[str, str]]], grace: float, out: TextIO | None
) -> int:
    """Start every ``(label, command, env)`` (the first is the aggregator), pump their output
    prefixed by label, and end them all together (Ctrl-C too)."""
    out = out or sys.stdout
    procs: list[subprocess.Popen[str]] = []
    lock = threading.Lock()
    finished: set[int] = set()  # pids of clients stopped because the run finished
    pumps = []
    for label, cmd, env in commands:
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
        t = threading.Thread(
            target=_pump, args=(procs[-1], label, out, lock, finished), daemon=True
        )
        t.start()
        pumps.append(t)
    try:
        return _wait(procs, [label for label, _, _ in commands], grace, out, lock, finished)
    except KeyboardInterrupt:
        _terminate(procs, grace)
        return 130
    finally:
        for t in pumps:
            t.join(timeout=1)


def _wait(
    procs: list[subprocess.Popen[str]],
    labels: list[str],
    grace: float,
    out: TextIO,
    lock: threading.Lock,
    finished: set[int],
) -> int:
    """0 when the aggregator succeeded and no client failed by itself.

    Once the aggregator is done, clients get ``grace`` seconds to hear STOP; those still
    running are stopped and do not count as failures: in an asynchronous run (fedasync,
    fedbuff) clients are still training when the last model version is made, and by the time
    they upload the aggregator is gone, so they would otherwise retry until stopped."""
    server, clients = procs[0], procs[1:]
    while True:
        code = server.poll()
        failed = [p for p in clients if p.poll() not in (None, 0)]
        if failed or code is not None:
            break
        time.sleep(0.1)
    if code is None or code != 0:  # a client failed, or the aggregator did: end the rest
        _terminate(procs, grace)
        return 1
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in clients) and time.monotonic() < deadline:
        time.sleep(0.1)
    running = [p for p in clients if p.poll() is None]
    with lock:  # their own words on being stopped ("interrupted") are dropped: it finished
        for p, label in zip(clients, labels[1:]):
            if p in running:
                finished.add(p.pid)
                out.write(f"[{label}] run finished\n")
        out.flush()
    _terminate(procs, grace)
    return 0 if all(p.returncode == 0 for p in clients if p not in running) else 1


def _terminate(procs: list[subprocess.Popen[str]], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _pump(
    proc: subprocess.Popen[str], label: str, out: TextIO, lock: threading.Lock, finished: set[int]
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            if proc.pid in finished:
                continue
            out.write(f"[{label}] {line}")
            out.flush()
