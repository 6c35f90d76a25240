"""The documentation site builds with no warning (``mkdocs build --strict``, as ``make docs``):
a broken link, a cross-reference to an API object that is gone, or a docstring mkdocstrings
cannot render fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .snippets import ROOT


def test_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs' banner about its successor
    )
    assert done.returncode == 0, done.stderr[-4000:]
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("index.html")}
    for page in ("tutorial/deployment/index.html", "reference/strategies/index.html"):
        assert page in pages
    reference = (tmp_path / "reference" / "strategies" / "index.html").read_text()
    assert 'id="fedloom.strategies.FedProx"' in reference  # the docstrings were rendered
