"""Pieces the adversarial tests share; the runtime tests' helpers are reused from there.

Every run here is a real ``fedloom server`` process with honest ``fedloom client`` processes
on loopback (the ``procs`` fixture kills whatever is left in teardown); the attacks come from
this process (``benchmarks/chaos_attacks.py``, importable as :mod:`chaos_attacks` once this
conftest has put ``benchmarks/`` on ``sys.path``, as ``tests/test_wire_fuzz.py`` does for
``chaos_fuzz``). Configs are tiny (mnist5k, 3-4 clients, a few rounds).
"""

from __future__ import annotations

import math
import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

# procs: the runtime tests' fixture (processes killed, whole sessions, in teardown)
from runtime.conftest import base_config, procs, with_changes  # noqa: F401

TRACEBACK = "Traceback (most recent call last)"


def small_config(out_dir: Path, name: str, *, clients: int, rounds: int, **runtime: Any):
    """mnist5k shards over ``clients`` clients, all of them sampled every round, logreg."""
    cfg = base_config(out_dir, name, min_clients=clients, **runtime)
    return with_changes(
        cfg,
        rounds=rounds,
        **{"data.num_clients": clients, "strategy.clients_per_round": clients},
    )


def tokens(n: int) -> dict[str, str]:
    """A token table for clients 0..n-1."""
    return {str(i): secrets.token_hex(8) for i in range(n)}


def start_clients(runner, config: Path, address: str, ids, **sets: Any) -> dict:
    """Honest ``fedloom client`` processes for ``ids``, started by ``runner`` (the ``procs``
    fixture); their tokens come from the config."""
    extra = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return {
        i: runner.fedloom(
            f"client {i}", "client", str(config), "--server", address, "--client-id", str(i), *extra
        )
        for i in ids
    }


def refused_total(metrics: list[dict[str, Any]]) -> Counter[str]:
    """The ``refused`` counts of every record, added up."""
    total: Counter[str] = Counter()
    for record in metrics:
        total.update(record.get("refused", {}))
    return total


def vm_hwm_mib(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def assert_finite(t: torch.Tensor, what: str) -> None:
    peak = float(t.abs().max())
    assert math.isfinite(peak), f"{what} holds non-finite values"
