"""Runs, processes and pages for the dashboard tests."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# procs: the runtime tests' fixture (processes killed, whole sessions, in teardown)
from runtime.conftest import procs  # noqa: F401

from fedloom.federation import Callback, Federation

SCREENSHOT_ENV = "FEDLOOM_DASHBOARD_SCREENSHOT"  # also copy the screenshot there (the README's)


class RoundGate(Callback):
    """Holds the loop at the end of each round until the test lets it go on: the page is
    then checked at a known round. Put it after the dashboard's feed."""

    def __init__(self) -> None:
        self._go = threading.Semaphore(0)
        self.released = False

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> None:
        if not self.released:
            self._go.acquire(timeout=60)

    def step(self) -> None:
        self._go.release()

    def open(self) -> None:
        self.released = True
        self._go.release()


def save_screenshot(driver: Any, path: Path) -> Path:
    """The page as a PNG test artifact; copied to ``$FEDLOOM_DASHBOARD_SCREENSHOT`` if set."""
    driver.save_screenshot(str(path))
    if target := os.environ.get(SCREENSHOT_ENV):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


@pytest.fixture
def gate() -> Iterator[RoundGate]:
    g = RoundGate()
    yield g
    g.open()
