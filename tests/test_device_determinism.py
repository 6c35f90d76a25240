"""train.deterministic: a run trains under torch's deterministic algorithms, gives the same
parameters twice, and leaves the process's settings as it found them (fedloom as a library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import run_overrides

import fedloom
from fedloom.experiment import Experiment


class SeesDeterminism(fedloom.Callback):
    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_round_end(self, fed: fedloom.Federation, record: dict[str, Any]) -> None:
        self.seen.append(torch.are_deterministic_algorithms_enabled())


def run(tmp_path: Path, name: str, deterministic: bool) -> tuple[torch.Tensor, list[bool]]:
    overrides = run_overrides(
        tmp_path, name, **{"train.deterministic": deterministic, "model.name": "mlp"}
    )
    exp = Experiment.from_config(None, overrides, progress=False)
    cb = SeesDeterminism()
    exp.federation.callbacks.append(cb)
    return exp.run().params, cb.seen


def test_deterministic_run_repeats_and_restores(tmp_path: Path) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    first, seen = run(tmp_path, "a", True)
    assert seen == [True, True]
    assert torch.are_deterministic_algorithms_enabled() == before
    second, _ = run(tmp_path, "b", True)
    assert torch.equal(first, second)
    _, seen = run(tmp_path, "c", False)
    assert seen == [before, before]
