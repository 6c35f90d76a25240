"""Shared pieces of the runtime tests: configs, processes on loopback, in-process runs, certs.

Every wait is bounded: processes are waited for with timeouts and killed (their whole session)
in teardown; client threads are daemons joined with timeouts; polling loops have deadlines.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from fedloom import ParamSpec, decode
from fedloom.runtime.gate import identity_metadata
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.proto import fedloom_pb2_grpc as pb_grpc
from fedloom.runtime.transport import GRPC_OPTIONS, split_chunk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
# processes and run records: shared with benchmarks/chaos.py
from procs import Proc, free_port, read_metrics  # noqa: E402, F401


# -- configs ----------------------------------------------------------------------------------
def base_config(out_dir: Path, name: str = "net", **runtime: Any) -> dict[str, Any]:
    """A quick FedAvg run on mnist5k shards (4 clients, logreg), writing under ``out_dir``."""
    return {
        "name": name,
        "seed": 0,
        "rounds": 3,
        "data": {"dataset": "mnist5k", "num_clients": 4, "partition": "shards"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "strategy": {"name": "fedavg", "clients_per_round": 3},
        "output": {
            "dir": Path(out_dir).as_posix(),
            "progress": False,
            "tensorboard": False,
            "figures": False,
        },
        "runtime": {"task_id": "rt-test", **runtime},
    }


def with_changes(cfg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``cfg`` with dotted keys changed, e.g. ``**{"train.lr": 0.1}``."""
    out = json.loads(json.dumps(cfg))
    for dotted, value in changes.items():
        d = out
        *path, last = dotted.split(".")
        for k in path:
            d = d.setdefault(k, {})
        d[last] = value
    return out


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=1))
    return path


def run_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["output"]["dir"]) / cfg["name"]


def saved_params(directory: Path, spec: ParamSpec) -> torch.Tensor:
    """The final global model a run directory holds, decoded against ``spec``."""
    params, meta = decode((directory / "model.safetensors").read_bytes(), spec)
    assert meta.get("format") == "fedloom"
    return params.clone()


def simulate(cfg: dict[str, Any], out_dir: Path):
    """The in-process simulation of ``cfg`` (run dir moved to ``out_dir``): (result, spec)."""
    from fedloom import Experiment

    exp = Experiment.from_config(with_changes(cfg, **{"output.dir": Path(out_dir).as_posix()}))
    result = exp.run()
    return result, exp.federation.spec


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``pred`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# -- processes ---------------------------------------------------------------------------------
@dataclass
class Procs:
    """Starts ``python -m fedloom ...`` processes with logs in ``dir``; kills leftovers."""

    dir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], **env: str) -> Proc:
        log = self.dir / f"{name.replace(' ', '_')}.{len(self.started)}.log"
        proc = Proc.start(name, args, log, cwd=ROOT, **env)
        self.started.append(proc)
        return proc

    def fedloom(self, name: str, *args: str, **env: str) -> Proc:
        return self.start(name, ["-m", "fedloom", *args], **env)

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (rc {p.popen.poll()}) -----\n{p.output()[-3000:]}"
            for p in self.started
        )

    def cleanup(self) -> None:
        for p in self.started:
            p.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Procs(logs)
    try:
        yield p
    finally:
        p.cleanup()


def pids_with_arg(needle: str) -> list[int]:
    """Pids of live processes (not zombies) whose command line contains ``needle``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# -- in-process runs ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def warm_optimizer() -> None:
    """Build one torch optimizer: the first one in a process imports torch._dynamo (seconds),
    which would otherwise land in a client's first round and trip a short round_timeout."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


class ClientThreads:
    """``RuntimeClient.run`` in daemon threads, remembering results and exceptions."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}

    def start(self, client) -> threading.Thread:
        def target() -> None:
            try:
                self.results[client.client_id] = client.run()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors[client.client_id] = e

        t = threading.Thread(target=target, daemon=True, name=f"client-{client.client_id}")
        t.start()
        self.threads.append(t)
        return t

    def join(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads still running after {timeout} s: {alive}"


@pytest.fixture
def client_threads() -> Iterator[ClientThreads]:
    ct = ClientThreads()
    yield ct
    for t in ct.threads:  # normally already joined; daemons never keep pytest alive
        t.join(0.1)


@pytest.fixture
def servers() -> Iterator[list]:
    """Aggregators a test starts; stopped in teardown whatever happened."""
    started: list = []
    yield started
    for s in started:
        with contextlib.suppress(Exception):
            s.stop(grace=0.2)


class IdentityStub:
    """An Aggregator stub that sends, with every call, the identity metadata a real client
    sends (the aggregator authenticates that before it reads a message), taken from the
    request's own task, client and token fields unless ``metadata`` is given."""

    def __init__(self, channel: grpc.Channel):
        self._stub = pb_grpc.AggregatorStub(channel)

    def __getattr__(self, method: str):
        call = getattr(self._stub, method)

        def with_identity(request, *args, metadata=None, **kwargs):
            if metadata is None:
                if method == "Upload":
                    request = iter(request)
                    first = next(request)
                    head = (
                        first
                        if isinstance(first, pb.Chunk)
                        else pb.Chunk.FromString(split_chunk(first)[0])
                    )
                    request = itertools.chain([first], request)
                else:
                    head = request
                metadata = identity_metadata(head.task_id, head.client_id, head.token)
            return call(request, *args, metadata=metadata, **kwargs)

        return with_identity


@contextlib.contextmanager
def stub_for(address: str, credentials: grpc.ChannelCredentials | None = None):
    channel = (
        grpc.insecure_channel(address, options=GRPC_OPTIONS)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=GRPC_OPTIONS)
    )
    try:
        yield IdentityStub(channel)
    finally:
        channel.close()


def check_in(stub, cid: int, task_id: str = "fedloom", token: str = "", samples: int = 10):
    return stub.CheckIn(
        pb.CheckInRequest(task_id=task_id, client_id=str(cid), token=token, num_samples=samples),
        timeout=10,
    )


def poll_for_train(
    stub, cid: int, task_id: str = "fedloom", timeout: float = 20.0, token: str = ""
):
    """Poll until the aggregator hands this client work (TRAIN) or STOP."""
    request = pb.PollRequest(task_id=task_id, client_id=str(cid), token=token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ins = stub.Poll(request, timeout=10)
        if ins.kind != pb.Instruction.WAIT:
            return ins
        time.sleep(ins.wait_s or 0.05)
    raise AssertionError(f"client {cid} got no work within {timeout} s")


def download(
    stub, cid: int, ins, spec: ParamSpec, task_id: str = "fedloom", token: str = ""
) -> torch.Tensor:
    return decode(download_bytes(stub, cid, ins, spec, task_id, token), spec)[0].clone()


def download_bytes(
    stub, cid: int, ins, spec: ParamSpec, task_id: str = "fedloom", token: str = ""
) -> bytes:
    """The model bytes of the round ``ins`` names, as the aggregator serves them."""
    from fedloom.runtime.transport import join_chunks

    request = pb.DownloadRequest(
        task_id=task_id, client_id=str(cid), token=token, round=ins.round, version=ins.version
    )
    _, data = join_chunks(stub.Download(request, timeout=60), spec.nbytes + (1 << 20))
    return bytes(data)


def upload(
    stub,
    cid: int,
    payload: bytes,
    *,
    round: int,
    version: int,
    samples: int = 10,
    chunk_size: int = 1 << 16,
    task_id: str = "fedloom",
):
    from fedloom.runtime.transport import iter_chunks

    chunks = iter_chunks(
        payload,
        chunk_size,
        task_id=task_id,
        client_id=str(cid),
        round=round,
        version=version,
        num_samples=samples,
        metrics_json=json.dumps({"loss": 1.0}),
    )
    return stub.Upload(chunks, timeout=60)


# -- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fedloom test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN=fedloom test {who}", cwd=d)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext",
            cwd=d,
        )  # fmt: skip
    return Certs(
        ca=str(d / "ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
    )
