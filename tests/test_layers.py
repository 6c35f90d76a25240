"""Layers that only import downward.

Every module under ``src/fedloom`` is parsed with :mod:`ast`; every import of a fedloom module
(relative or absolute, at module level, inside a function, under ``TYPE_CHECKING``) must go
to the module's own layer or a lower one. A module's layer is that of its top-level package
or module below ``fedloom`` (``fedloom.simulation.engine`` -> ``simulation``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedloom"

# lowest first; a layer may import itself and the layers below it, never one above
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {
            "params",
            "wire",
            "task",
            "data",
            "update",
            "rounds",
            "backend",
            "errors",
            "seeding",
            "registry",
            "optim",
            "classification",
            "models",
            "personal",
            "accel",
        },
    ),
    # strategies.py and aggregators.py are the user-facing namespaces of these two packages;
    # stages.py: update stages around a strategy (privacy, compression); compression (the
    # update codecs) sits beside them: engines and the runtime encode with it
    (
        "strategies",
        {
            "algorithms",
            "aggregation",
            "strategies",
            "aggregators",
            "stages",
            "privacy",
            "compression",
        },
    ),
    # engines.py is the user-facing namespace of the simulation engines
    ("engines", {"simulation", "runtime", "topology", "observe", "engines"}),
    ("round loop", {"federation"}),
    (
        "composition",
        {"experiment", "compose", "config", "cli", "deploy", "adapters", "__init__", "__main__"},
    ),
]
# parts that import the foundation only, though their layer is higher: the topology is the
# graph alone; the codecs turn tensors into bytes and back and need no strategy
GRAPH_ONLY = {"topology": "foundation", "compression": "foundation"}

LEVEL = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}
NAMES = [name for name, _ in LAYERS]


def module_name(path: Path) -> str:
    parts = ("fedloom", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str, path: Path | None = None) -> str:
    """The top-level part below ``fedloom``; the package's own ``__init__`` for ``fedloom``."""
    parts = module.split(".")
    if len(parts) == 1:
        return path.stem if path is not None else "__init__"
    return parts[1]


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, imported fedloom module)`` for every import in the file, at any depth."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    text = path.read_text() if source is None else source
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fedloom"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "fedloom":
                continue
            # ``from . import optim`` imports the module fedloom.optim, not the package
            subs = [f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")]
            found += [(node.lineno, t) for t in subs or [target]]
    return sorted(found)


def upward(path: Path, source: str | None = None) -> list[str]:
    """One line per import of ``path`` that goes to a higher layer."""
    own = part_of(module_name(path), path)
    wrong = []
    for line, target in imports(path, source):
        to = part_of(target)
        if to == "__init__" and own != "__init__":
            wrong.append(f"line {line}: imports the fedloom package itself ({target})")
        elif LEVEL[to] > LEVEL[own]:
            wrong.append(
                f"line {line}: imports {target} ({NAMES[LEVEL[to]]} layer) from the "
                f"{NAMES[LEVEL[own]]} layer"
            )
        elif own in GRAPH_ONLY and to != own and LEVEL[to] > NAMES.index(GRAPH_ONLY[own]):
            wrong.append(
                f"line {line}: imports {target} ({NAMES[LEVEL[to]]} layer); {own} imports "
                f"only the {GRAPH_ONLY[own]} layer"
            )
    return wrong


MODULES = sorted(SRC.rglob("*.py"))


def test_every_part_of_fedloom_has_a_layer() -> None:
    parts = {p.stem if p.parent == SRC else p.relative_to(SRC).parts[0] for p in MODULES}
    missing = sorted(parts - set(LEVEL))
    assert not missing, f"add these to LAYERS in {Path(__file__).name}: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC.parent)))
def test_imports_go_only_downward(path: Path) -> None:
    wrong = upward(path)
    own = part_of(module_name(path), path)
    assert not wrong, (
        f"{path.relative_to(SRC.parent)} ({own}, {NAMES[LEVEL[own]]} layer) imports upward:\n"
        + "\n".join(wrong)
    )


def test_the_scan_sees_every_kind_of_import() -> None:
    """Absolute, relative, ``from pkg import module``, in a function, under TYPE_CHECKING."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import fedloom.experiment\n"
        "from fedloom.federation import loop\n"
        "from .. import optim\n"
        "from ..runtime.client import RuntimeClient\n"
        "from .engine import InProcessClients\n"
        "if TYPE_CHECKING:\n"
        "    from ..deploy import roles\n"
        "def f():\n"
        "    from ..config import Config\n"
    )
    path = SRC / "simulation" / "engine.py"  # as if this were its text
    assert [t for _, t in imports(path, source)] == [
        "fedloom.experiment",
        "fedloom.federation.loop",
        "fedloom.optim",
        "fedloom.runtime.client",
        "fedloom.simulation.engine",
        "fedloom.deploy.roles",
        "fedloom.config",
    ]
    wrong = upward(path, source)
    assert [w.split()[3] for w in wrong] == [
        "fedloom.experiment",
        "fedloom.federation.loop",
        "fedloom.deploy.roles",
        "fedloom.config",
    ], wrong
    assert (
        wrong[0] == "line 2: imports fedloom.experiment (composition layer) from the engines layer"
    )
    graph = upward(SRC / "topology" / "graph.py", "from ..simulation import engine\n")
    assert graph == [
        "line 1: imports fedloom.simulation.engine (engines layer); topology imports only "
        "the foundation layer"
    ]
    codec = upward(SRC / "compression" / "chain.py", "from ..algorithms import fedavg\n")
    assert codec == [
        "line 1: imports fedloom.algorithms.fedavg (strategies layer); compression imports "
        "only the foundation layer"
    ]
