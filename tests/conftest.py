"""Shared fixtures: tiny tasks on random tensors, mnist5k run overrides, a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedloom import ClassificationTask, Federation, TensorDataset, load_checkpoint, save_checkpoint
from fedloom.config import SimulationConfig

# Exactly the config's default thread count (simulation.threads), which every config run
# applies to its processes anyway: tests building engines by hand get the same count. Tiny
# models train fastest on one thread (several OpenMP threads on a busy 2-core machine make
# each small matmul wait for the others: seen 60x slower). tests/test_threads.py starts runs
# at other counts to check that the default makes them bit-identical.
torch.set_num_threads(SimulationConfig().threads)

IN_FEATURES, NUM_CLASSES = 8, 3
CLIENT_SIZES = (12, 20, 8, 16, 24, 10)


def tiny_dataset(seed: int = 0, n_test: int = 30) -> TensorDataset:
    """A random, learnable 3-class problem with 8 features."""
    g = torch.Generator().manual_seed(seed)
    n = sum(CLIENT_SIZES)
    centers = torch.randn(NUM_CLASSES, IN_FEATURES, generator=g) * 2
    y = torch.randint(0, NUM_CLASSES, (n + n_test,), generator=g)
    x = centers[y] + torch.randn(n + n_test, IN_FEATURES, generator=g)
    return TensorDataset("tiny", x[:n], y[:n], x[n:], y[n:], NUM_CLASSES)


def tiny_parts(sizes: tuple[int, ...] = CLIENT_SIZES) -> list[torch.Tensor]:
    """Contiguous, unequal client splits of the tiny training set."""
    out, start = [], 0
    for s in sizes:
        out.append(torch.arange(start, start + s))
        start += s
    return out


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, 6), nn.ReLU(), nn.Linear(6, NUM_CLASSES))


def make_tiny_task(cls: type[ClassificationTask] = ClassificationTask, **kwargs: Any):
    """A ``ClassificationTask`` (or subclass) over the tiny dataset and six clients."""
    kwargs.setdefault("lr", 0.1)
    kwargs.setdefault("batch_size", 4)
    return cls(tiny_mlp, tiny_dataset(), tiny_parts(), **kwargs)


def resumed(
    make: Callable[[int], Federation], tmp_path: Path, rounds: int = 4, stop: int = 2
) -> tuple[Federation, Federation, dict[str, Any]]:
    """The resume check every stateful part gets: ``make(rounds)`` run straight through, and
    ``make(stop)`` run, checkpointed to disk, loaded into a fresh ``make(rounds)`` and run on.
    Asserts the final parameters are bit-identical; returns (straight, resumed, checkpoint)
    for the caller's own checks of the state."""
    straight = make(rounds)
    straight.run()
    first = make(stop)
    first.run()
    state = load_checkpoint(save_checkpoint(tmp_path / "checkpoint.pt", first.state_dict()))
    second = make(rounds)
    second.load_state_dict(state)
    second.run()
    assert torch.equal(second.params, straight.params)
    return straight, second, state


@pytest.fixture
def tiny_task() -> ClassificationTask:
    return make_tiny_task()


def run_overrides(out_dir: Path, name: str = "run", **extra: Any) -> list[str]:
    """``--set`` overrides for a quick mnist5k run whose directory lies under ``out_dir``."""
    base = {
        "name": name,
        "seed": 0,
        "rounds": 2,
        "data.dataset": "mnist5k",
        "data.num_clients": 10,
        "data.partition": "iid",
        "model.name": "logreg",
        "strategy.clients_per_round": 3,
        "train.batch_size": 20,
        "train.lr": 0.05,
        "output.dir": Path(out_dir).as_posix(),
        "output.progress": False,
    }
    base.update(extra)
    return [f"{k}={toml_value(v)}" for k, v in base.items()]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "'" + v + "'"  # a TOML literal string: no escapes, safe for paths
    return repr(v)


class RecordingServer:
    """A local HTTP server recording every POST as (path, JSON body); replies with ``status``
    and ``reply`` (by default 200 and Telegram's ``{"ok": true}``), which a test may change."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.status, self.reply = 200, {"ok": True, "result": {}}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, json.loads(body)))
                data = json.dumps(outer.reply).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def http_server(monkeypatch) -> Iterator[RecordingServer]:
    for var in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    server = RecordingServer()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    thread.join(5)


@pytest.fixture
def register_temp_model() -> Iterator[Callable[[str, Callable], None]]:
    """Register models for one test and remove them afterwards."""
    from fedloom.registry import MODELS

    added: list[str] = []

    def register(name: str, factory: Callable) -> None:
        MODELS.register(name, factory, overwrite=True)
        added.append(name)

    yield register
    for name in added:
        MODELS.unregister(name)
