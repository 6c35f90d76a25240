"""Every code block of README.md and docs/ runs (or, where marked, is parsed or skipped with
a reason); a page whose snippet fails names the page and line. See snippets.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from .snippets import ROOT, PageRunner, Tally, extract, pages

TALLY = Tally()
# a skip is for what cannot run here (several machines, a download); keep them few
MAX_SKIPPED = 6


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_snippets(page: Path, tmp_path: Path) -> None:
    TALLY.add(PageRunner(page, tmp_path).run())


@pytest.mark.parametrize(
    "where, reason",
    [(s.where, s.arg) for p in pages() for s in extract(p) if s.marker == "skip"],
)
def test_skipped_snippet(where: str, reason: str) -> None:
    """Each skipped snippet shows in pytest's summary (``-ra``) with its reason."""
    pytest.skip(f"{where}: {reason}")


def test_snippet_counts() -> None:
    """The counts of the pages run above (printed with ``-s`` or on failure), few skips, and
    code in every page of the tutorial."""
    print(TALLY.summary())
    skipped = [s for p in pages() for s in extract(p) if s.marker == "skip"]
    assert len(skipped) <= MAX_SKIPPED, [s.where for s in skipped]
    for page in sorted((ROOT / "docs" / "tutorial").glob("*.md")):
        if page.stem != "index":
            assert any(s.lang != "text" for s in extract(page)), f"{page}: no code"


BROKEN = {
    "python": "```python\nraise ValueError('stale')\n```\n",
    "toml key": "```toml\n[data]\naplha = 0.1\n```\n",
    "toml option": '```toml\n[strategy]\nname = "fedprox"\noptions = { mu = -1 }\n```\n',
    "fedloom exit": "```bash\nfedloom run missing.toml\n```\n",
    "fedloom argv": "<!-- snippet: parse why -->\n```bash\nfedloom run --no-flag x.toml\n```\n",
    "unknown command": "```bash\ncurl http://example.org\n```\n",
    "background job": "```bash\nfedloom server c.toml &\n```\n",
    "no language": "```\nfedloom run c.toml\n```\n",
    "skip without reason": "<!-- snippet: skip -->\n```python\npass\n```\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_snippet_fails_naming_its_line(case: str, tmp_path: Path) -> None:
    """The runner is not a formality: each kind of rot fails, naming page and line."""
    page = tmp_path / "page.md"
    page.write_text("# a page\n\ntext\n\n" + BROKEN[case], encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AssertionError, match=r"page\.md:\d+"):
        PageRunner(page, work).run()
