"""Config keys named in the prose exist: every `` `section.key` `` span of README.md and the
site resolves through fedloom's config sections, and every ``strategy.options.KEY`` is a
parameter of a strategy (on a strategy's page, of that page's strategy). Code blocks are
checked by running them (test_snippets.py); this keeps the sentences and tables around them
honest too."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

import fedloom.data
import fedloom.models
import fedloom.strategies
from fedloom.config import LOOP_OPTIONS, Config
from fedloom.registry import DATASETS, MODELS, STRATEGIES

from .snippets import FENCE, ROOT, pages

# importing the namespaces registers the built-in models, datasets and strategies
assert fedloom.data and fedloom.models and fedloom.strategies
SECTIONS = "|".join(Config.model_fields)
KEY = re.compile(rf"`((?:{SECTIONS})\.[A-Za-z_][\w.*]*)")
FILES = (".json", ".jsonl", ".md", ".png", ".pt", ".py", ".safetensors", ".toml")
STRATEGY_NAME = re.compile(r'strategy\.name = "(\w+)"')


def prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    out, inside = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            out.append(line)
    return "\n".join(out)


def params(factory: Any) -> set[str]:
    return set(inspect.signature(factory).parameters)


def resolve(key: str, strategies: set[str]) -> str | None:
    """None if ``key`` exists, else what is wrong with it."""
    parts = key.split(".")
    model: type[BaseModel] = Config
    for i, part in enumerate(parts):
        if part == "*":
            return None
        field = model.model_fields.get(part)
        if field is None:
            return f"{'.'.join(parts[: i + 1])}: no such key"
        rest = parts[i + 1 :]
        kinds = [a for a in (*get_args(field.annotation), field.annotation) if a is not None]
        sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if sub is not None:
            model = sub
            continue
        if not rest:
            return None
        if part != "options":  # a dict of free keys (runtime.tokens) or a list
            return None if dict in kinds or "dict" in str(field.annotation) else f"{key}: scalar"
        section = parts[0]
        if section == "strategy":
            allowed = set(LOOP_OPTIONS)
            for name in strategies or set(STRATEGIES.names()):
                allowed |= params(STRATEGIES.get(name))
        elif section == "model":
            allowed = set().union(*(params(MODELS.get(n)) for n in MODELS.names()))
        elif section == "data":
            allowed = set().union(*(params(DATASETS.get(n)) for n in DATASETS.names()))
        else:  # task.options: the factory's own keywords
            return None
        return None if rest[0] in allowed else f"{key}: {rest[0]!r} is not an option here"
    return None


def keys(page: Path) -> list[str]:
    return [k.rstrip(".*") or k for k in KEY.findall(prose(page)) if not k.endswith(FILES)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_keys_in_prose_exist(page: Path) -> None:
    strategies: set[str] = set()
    if page.parent.name == "strategies":
        strategies = set(STRATEGY_NAME.findall(page.read_text(encoding="utf-8")))
    wrong = [problem for key in keys(page) if (problem := resolve(key, strategies))]
    assert not wrong, wrong


def test_the_checker_catches_a_wrong_key() -> None:
    """The resolver refuses what a typo or a stale page would say."""
    assert resolve("data.aplha", set()) == "data.aplha: no such key"
    assert resolve("strategy.options.mu", {"fedavg"}) is not None
    assert resolve("strategy.options.mu", {"fedprox"}) is None
    assert resolve("runtime.secagg.stage_timeout", set()) is None
    assert resolve("runtime.secagg.timeout", set()) is not None
    assert resolve("output.*", set()) is None
