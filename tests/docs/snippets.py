"""The snippet runner: every fenced code block of README.md and docs/ is executed or checked.

Blocks are read in page order and run in one scratch directory per page (holding links to
``examples/`` and ``benchmarks/``), so a page's blocks build on each other as a reader's
would: a TOML block saved as a file is the config a later shell line runs, a Python block
sees the names the page's earlier blocks defined. What each language means:

- ``python``: executed (one namespace per page, the scratch directory as working directory).
- ``toml``: parsed and validated by :func:`fedloom.config.load_config` (a section alone is
  checked over the defaults), its strategy built and its privacy stage composed, as a run
  does before loading data; ``json``: the same (asmallbit's flat keys too).
- ``bash``: one command a line (``\\`` continues it, ``#`` starts a comment). ``fedloom ...``
  runs in this process through :func:`fedloom.cli.main` and must exit 0; ``python
  SCRIPT ...`` runs in this process too (``runpy``, as ``__main__``); ``make TARGET`` is
  dry-run (``make -n``: the target exists). Anything else must be marked.
- ``text``: output or a listing, not code: nothing to run. A fence without a language is an
  error, so that no code block escapes by accident.

A marker, an HTML comment on the line before the fence, changes that:

- ``<!-- snippet: file NAME -->``: also write the block to NAME in the scratch directory.
- ``<!-- snippet: parse REASON -->`` (shell): commands are parsed, not run: ``fedloom``'s
  own argparse reads the arguments and the config they name is loaded with its ``--set``
  overrides; ``torchrun ... -m fedloom`` the same; a Python script must exist and compile.
  For commands that need several machines or minutes.
- ``<!-- snippet: skip REASON -->``: not run at all; counted and reported.

``python tests/docs/snippets.py`` runs every page and prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import os
import py_compile
import re
import runpy
import shlex
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"<!--\s*snippet:\s*(?P<kind>file|parse|skip)\s*(?P<arg>.*?)\s*-->")
LANGS = {"python", "toml", "json", "bash", "text"}
FEDLOOM = {"fedloom", ".venv/bin/fedloom"}
PYTHON = {"python", "python3", ".venv/bin/python"}
LINKED = ("examples", "benchmarks")
# the modules whose import registers fedloom's built-in names (models, datasets, strategies,
# aggregators, engines, tasks)
BUILTINS = (
    "fedloom.models",
    "fedloom.data",
    "fedloom.strategies",
    "fedloom.aggregators",
    "fedloom.compose.engines",
)  # the repository's folders a page's commands name


def pages() -> list[Path]:
    """README.md and every page of the site, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass
class Snippet:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None = None  # file, parse or skip
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"


def extract(page: Path) -> list[Snippet]:
    """The fenced blocks of a page, with the marker on the line before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m["indent"]), m["fence"], m["lang"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise SnippetError(f"{_shown(page)}:{i + 1}: unclosed code fence")
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        marker = MARKER.search(lines[i - 1]) if i else None
        snip = Snippet(page, i + 1, lang, body)
        if marker:
            snip.marker, snip.arg = marker["kind"], marker["arg"]
        if lang not in LANGS:
            raise SnippetError(
                f"{snip.where}: code fence language {lang!r}; give one of {sorted(LANGS)}"
            )
        if snip.marker in ("parse", "skip") and not snip.arg:
            raise SnippetError(f"{snip.where}: a {snip.marker} marker must say why")
        out.append(snip)
        i = end + 1
    return out


def _shown(page: Path) -> str:
    """A page as the repository names it (a page elsewhere, e.g. a test's, by its path)."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


class SnippetError(AssertionError):
    """A snippet that failed, named by page and line."""


@dataclass
class Tally:
    """What was done with each snippet: run, parsed (shell lines checked, not run), skipped,
    text (output shown, not code)."""

    counts: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # CPU time of this process

    def add(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.skipped.extend(other.skipped)
        self.seconds.update(other.seconds)

    def summary(self) -> str:
        c = self.counts
        return (
            f"snippets: {c['run']} run, {c['parsed']} parsed, {c['skipped']} skipped, "
            f"{c['text']} text blocks; shell commands: {c['cmd_run']} run, "
            f"{c['cmd_parsed']} parsed, {c['cmd_dry']} make -n"
        )


class PageRunner:
    """Runs one page's snippets in order in ``workdir``."""

    def __init__(self, page: Path, workdir: Path):
        self.page, self.workdir = page, workdir
        self.namespace: dict[str, Any] = {"__name__": "__snippet__"}
        self.tally = Tally()

    def run(self) -> Tally:
        for folder in LINKED:
            if not (self.workdir / folder).exists():
                (self.workdir / folder).symlink_to(ROOT / folder, target_is_directory=True)
        with _isolated(self.workdir):
            for snip in extract(self.page):
                start = time.process_time()
                try:
                    self.one(snip)
                except SnippetError as e:
                    if str(e).startswith(snip.where):
                        raise
                    raise SnippetError(f"{snip.where}: {e}") from e
                except Exception as e:  # any failure names its snippet (re-raised)
                    raise SnippetError(f"{snip.where}: {type(e).__name__}: {e}") from e
                self.tally.seconds[snip.where] = time.process_time() - start
        return self.tally

    def one(self, snip: Snippet) -> None:
        if snip.lang == "text":
            self.tally.counts["text"] += 1
            return
        if snip.marker == "skip":
            self.tally.counts["skipped"] += 1
            self.tally.skipped.append(f"{snip.where}: {snip.arg}")
            return
        if snip.marker == "file":
            (self.workdir / snip.arg).write_text(snip.text, encoding="utf-8")
        if snip.lang == "python":
            code = compile(snip.text, f"{snip.where}", "exec")
            if snip.marker != "file":
                exec(code, self.namespace)
        elif snip.lang in ("toml", "json"):
            self.config(snip)
        elif snip.lang == "bash":
            for line, cmd in commands(snip.text):
                self.command(snip, line, cmd, parse_only=snip.marker == "parse")
        self.tally.counts["parsed" if snip.marker == "parse" else "run"] += 1

    def config(self, snip: Snippet) -> None:
        """Loaded and validated, then its strategy built (option values are checked there)
        and wrapped in its privacy stage (which refuses combinations that break a
        guarantee): all that a run checks before it loads data."""
        from fedloom.compose.privacy import with_privacy
        from fedloom.compose.strategy import build_strategy
        from fedloom.config import load_config

        data = tomllib.loads(snip.text) if snip.lang == "toml" else _json(snip.text)
        cfg = load_config(data)
        strategy = build_strategy(cfg)
        if cfg.task is None:
            with_privacy(cfg, strategy, cfg.data.num_clients)

    def command(self, snip: Snippet, line: int, argv: list[str], *, parse_only: bool) -> None:
        where = f"{snip.where} (+{line})"
        prog, args = argv[0], argv[1:]
        if prog == "torchrun":
            if "-m" not in args or args[args.index("-m") + 1] != "fedloom" or not parse_only:
                raise SnippetError(f"{where}: torchrun needs a parse marker and -m fedloom")
            prog, args = "fedloom", args[args.index("-m") + 2 :]
        if prog in FEDLOOM:
            if parse_only:
                _parse_fedloom(args)
                self.tally.counts["cmd_parsed"] += 1
                return
            _run_fedloom(args, where)
            self.tally.counts["cmd_run"] += 1
        elif prog in PYTHON:
            script = self.workdir / args[0]
            if parse_only:
                py_compile.compile(str(script), doraise=True)
                self.tally.counts["cmd_parsed"] += 1
                return
            _run_script(args, where)
            self.tally.counts["cmd_run"] += 1
        elif prog == "make":
            done = subprocess.run(
                ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            if done.returncode != 0:
                raise SnippetError(f"{where}: make -n {' '.join(args)}: {done.stderr}")
            self.tally.counts["cmd_dry"] += 1
        else:
            raise SnippetError(f"{where}: {prog!r} is not a command the runner knows; mark it")


def commands(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line offset, argv) of each command of a shell block: continuations joined, comments
    dropped. Pipes, background jobs and loops are refused: such a block needs a marker."""
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines()):
        if not pending:
            start = n
        pending += raw
        if raw.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        argv = shlex.split(pending, comments=True)
        pending = ""
        if not argv:
            continue
        if any(tok in ("|", "&", "&&", ";", "for", "do", "done") for tok in argv) or any(
            tok.endswith(("&", ";")) for tok in argv
        ):
            raise SnippetError(f"+{start}: shell syntax the runner does not run: {argv}")
        yield start, argv


def _json(text: str) -> dict[str, Any]:
    import json

    data = json.loads(text)
    if not isinstance(data, dict):
        raise SnippetError("a JSON config is an object")
    return data


def _parse_fedloom(args: list[str]) -> None:
    """argparse's own reading of the command, then the config it names with its overrides."""
    from fedloom.cli import build_parser
    from fedloom.config import load_config

    try:
        ns = build_parser().parse_args(args)
    except SystemExit as e:
        raise SnippetError(f"fedloom {' '.join(args)}: argparse refused it (exit {e.code})") from e
    config = getattr(ns, "config", None) or getattr(ns, "target", None)
    if config is not None and not str(config).endswith(".py"):
        load_config(config, getattr(ns, "overrides", None) or _launch_sets(ns))


def _launch_sets(ns: Any) -> list[str]:
    """``fedloom launch``'s ``--set`` items, which argparse leaves in its REMAINDER."""
    rest = list(getattr(ns, "args", []) or [])
    return [rest[i + 1] for i, tok in enumerate(rest[:-1]) if tok == "--set"]


def _run_script(args: list[str], where: str) -> None:
    """``python SCRIPT ARGS`` in this process (``runpy``, as ``__main__``): the page's
    scratch directory is the working directory and on the import path, torch is loaded
    once for all pages."""
    saved = list(sys.argv)
    sys.argv[:] = args
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise SnippetError(f"{where}: python {' '.join(args)}: exit {e.code}") from None
    finally:
        sys.argv[:] = saved


def _run_fedloom(args: list[str], where: str) -> None:
    from fedloom.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    if code != 0:
        output = (out.getvalue()[-3000:] + err.getvalue()[-3000:]).strip()
        raise SnippetError(f"{where}: fedloom {' '.join(args)}: exit {code}\n{output}")


@contextlib.contextmanager
def _isolated(workdir: Path) -> Iterator[None]:
    """The page's scratch directory as working directory and first import path; afterwards
    the registries, modules and paths are as before, so pages do not meet."""
    import importlib

    from fedloom import registry

    for module in BUILTINS:  # registered before the snapshot, so they stay registered
        importlib.import_module(module)
    saved = {
        name: dict(reg._items)
        for name, reg in vars(registry).items()
        if isinstance(reg, registry.Registry)
    }
    modules, path, cwd = set(sys.modules), list(sys.path), os.getcwd()
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(workdir)) or name.startswith("examples"):
                del sys.modules[name]
        for name, items in saved.items():
            reg = getattr(registry, name)
            reg._items.clear()
            reg._items.update(items)


def run_all(base: Path) -> Tally:
    total = Tally()
    for i, page in enumerate(pages()):
        work = base / f"{i:02d}-{page.stem}"
        work.mkdir(parents=True, exist_ok=True)
        total.add(PageRunner(page, work).run())
    return total


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tally = run_all(Path(tmp))
    print(tally.summary())
    for item in tally.skipped:
        print("skipped:", item)
