"""Processes of a networked run on loopback, and what the run writes: the chaos benchmark and
the runtime tests (through a ``sys.path`` entry, as for :mod:`chaos_fuzz`) both use these.

A process is ``python -m fedloom ...`` (or any python command) started in its own session
with its output in a log file, so that :meth:`Proc.kill` ends it and whatever it started.
No pytest here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON = sys.executable
SRC = Path(__file__).resolve().parents[1] / "src"
# variables that would make a child join a torch.distributed group or take another's identity
FOREIGN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
               "FEDLOOM_PORT", "FEDLOOM_TOKEN")  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child: one torch thread, unbuffered output, this
    checkout's ``src`` first on ``PYTHONPATH``, none of :data:`FOREIGN_ENV`; then ``extra``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in FOREIGN_ENV:
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def default_sigint() -> None:
    """Ctrl-C's default in the child: started from a background job of a non-interactive
    shell (as CI may be), a process inherits SIGINT ignored, and a test's SIGINT would not
    reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Proc:
    """A started process: its name, its ``Popen`` and the log file holding its output."""

    name: str
    popen: subprocess.Popen
    log: Path
    killed_by_us: bool = False  # set by a caller that kills it on purpose

    @classmethod
    def start(cls, name: str, args: list[str], log: Path, *, cwd: Path, **env: str) -> Proc:
        """``python *args`` in a new session, stdout and stderr to ``log``."""
        with open(log, "w") as f:
            popen = subprocess.Popen(
                [PYTHON, *args],
                cwd=cwd,
                env=child_env(**env),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_sigint,
            )
        return cls(name, popen, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        """The exit code; AssertionError (with the output's tail) if still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout} s; its output:\n{self.output()[-4000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process's whole session (it was started in a new one)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The records of ``directory/metrics.jsonl`` so far (a line being written is skipped)."""
    path = directory / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for ln in path.read_text().splitlines():
        if ln.strip():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(ln))
    return out
