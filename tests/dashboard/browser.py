"""Headless Chromium for the dashboard tests, and the checker that says a page moves.

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``;
``.ci/run`` installs them), Selenium from the dev extra. Missing, the browser tests are
skipped here but fail under CI (``CI=true``), so CI cannot pass them by skipping.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class PageStalled(AssertionError):
    """The page did not reach what was expected in time: it stopped updating."""


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the browser test cannot run: {why}")
    pytest.skip(why)


@contextmanager
def chromium(width: int = 1280, height: int = 1900) -> Iterator[Any]:
    """A headless Chromium WebDriver with the console log kept; quit afterwards."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("chromium or chromedriver missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            f"--window-size={width},{height}", "--no-first-run", "--no-proxy-server"]  # fmt: skip
    for arg in args:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """What a test reads off the dashboard page, each wait bounded and failing loudly."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def text(self, element_id: str) -> str:
        return str(self.js(f"return document.getElementById({element_id!r}).textContent"))

    def round(self) -> int:
        return int(self.text("round") or 0)

    def chart_points(self, metric: str) -> int:
        return int(
            self.js(
                f"const s = document.querySelector('svg[data-metric={metric}]');"
                "return s ? Number(s.dataset.points || 0) : 0"
            )
        )

    def client_state(self, cid: int) -> str | None:
        value = self.js(
            f"const r = document.querySelector('tr[data-client=\"{cid}\"]');"
            "return r ? r.dataset.state : null"
        )
        return None if value is None else str(value)

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll ``check`` until truthy; :class:`PageStalled` naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise PageStalled(f"the page stopped updating: no {what} after {timeout} s")
            time.sleep(0.05)

    def wait_round(self, n: int, timeout: float = 20.0) -> None:
        """The round counter shows at least ``n`` (rounds finished)."""
        try:
            self.wait(f"round {n}", lambda: self.round() >= n, timeout)
        except PageStalled as e:
            raise PageStalled(f"{e}; the round counter shows {self.round()}") from None

    def console_errors(self) -> list[str]:
        """The browser console's SEVERE entries since the last call."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
