"""The public API: a small top level, namespaces for the rest, and every name published before
still importable from ``fedloom`` (the same object as in its namespace)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import fedloom

SRC = Path(__file__).resolve().parents[1] / "src"

TOP_LEVEL = [
    "ClassificationTask",
    "ClientContext",
    "ClientUpdate",
    "Config",
    "Experiment",
    "FedAvg",
    "Federation",
    "FedloomError",
    "LocalFederation",
    "Node",
    "RoundPlan",
    "RunResult",
    "Strategy",
    "Task",
    "Topology",
    "build_model",
    "connect",
    "load_config",
    "load_mnist5k",
    "register_model",
    "run",
]

NAMESPACES = [
    "fedloom.strategies",
    "fedloom.aggregators",
    "fedloom.engines",
    "fedloom.runtime",
    "fedloom.data",
    "fedloom.models",
    "fedloom.errors",
]


def _names(text: str) -> list[str]:
    return text.split()


# ``fedloom.__all__`` before the API was split (97 names), each with the module that now
# publishes it; all of them must stay importable from ``fedloom``.
OLD_ALL: dict[str, str] = {
    **dict.fromkeys(
        _names(
            """IFCA QFFL STRATEGIES AsyncStrategy ClientAlgorithm Ditto FedAdagrad FedAdam
            FedAsync FedAvg FedAvgM FedBuff FedDyn FedNova FedPer FedProx FedYogi
            KMeansClustered LocalRun RoundPlan Scaffold Strategy register_client_algorithm
            register_strategy personalised_accuracy"""
        ),
        "fedloom.strategies",
    ),
    **dict.fromkeys(
        _names(
            """AGGREGATORS Aggregator CoordinateMedian ElasticAggregator Krum MultiKrum
            TrimmedMean WeightedMean register_aggregator"""
        ),
        "fedloom.aggregators",
    ),
    **dict.fromkeys(
        _names(
            """AttackedClients DistributedClients InProcessClients LabelFlip ProcessPoolClients
            ScaledNoise SignFlip VectorizedClients"""
        ),
        "fedloom.engines",
    ),
    **dict.fromkeys(
        _names(
            """DATASETS IID PARTITIONERS Dirichlet Natural Partitioner PowerLaw Shards
            TensorDataset load_fashion_mnist load_femnist load_mnist load_mnist5k
            load_synthetic partition_report register_dataset register_partitioner"""
        ),
        "fedloom.data",
    ),
    **dict.fromkeys(
        _names(
            """CheckpointError ClientError ConfigError DatasetError FedloomError RunDirError
            WireError"""
        ),
        "fedloom.errors",
    ),
    **dict.fromkeys(_names("MODELS build_model register_model"), "fedloom.models"),
    **dict.fromkeys(
        _names("Callback Federation RoundState RunResult load_checkpoint save_checkpoint"),
        "fedloom.federation",
    ),
    "AsyncFederation": "fedloom.federation.async_loop",
    "RunRecorder": "fedloom.federation.recorder",
    "connect": "fedloom.runtime",
    "LocalFederation": "fedloom.deploy.local",
    **dict.fromkeys(_names("Node Topology analysis"), "fedloom.topology"),
    **dict.fromkeys(_names("Config load_config"), "fedloom.config"),
    **dict.fromkeys(_names("Experiment run"), "fedloom.experiment"),
    **dict.fromkeys(_names("Task ClientContext"), "fedloom.task"),
    "ClassificationTask": "fedloom.classification",
    "ClientUpdate": "fedloom.update",
    **dict.fromkeys(_names("ParamSpec flatten_module"), "fedloom.params"),
    **dict.fromkeys(_names("encode decode"), "fedloom.wire"),
    "derive_seed": "fedloom.seeding",
}
OLD_MODULES = ["models", "optim"]  # submodules that were in ``__all__`` too


def test_the_old_fixture_is_complete() -> None:
    """97 names: the fixture itself cannot have lost one."""
    assert len(OLD_ALL) + len(OLD_MODULES) == 97


def test_top_level_is_the_small_set() -> None:
    assert fedloom.__all__ == TOP_LEVEL
    listed = set(dir(fedloom))
    assert set(TOP_LEVEL) <= listed
    assert not (set(OLD_ALL) - set(TOP_LEVEL)) & listed, "old names are reachable, not listed"


@pytest.mark.parametrize("name", sorted(OLD_ALL))
def test_old_name_still_importable_and_same_object(name: str) -> None:
    namespace = importlib.import_module(OLD_ALL[name])
    value = getattr(fedloom, name)
    assert value is getattr(namespace, name)
    scope: dict[str, object] = {}
    exec(f"from fedloom import {name}", scope)
    assert scope[name] is value


@pytest.mark.parametrize("name", OLD_MODULES)
def test_old_submodules_still_attributes(name: str) -> None:
    assert getattr(fedloom, name) is importlib.import_module(f"fedloom.{name}")


def test_top_level_names_are_their_namespace_objects() -> None:
    for name in TOP_LEVEL:
        assert getattr(fedloom, name) is getattr(importlib.import_module(OLD_ALL[name]), name)


@pytest.mark.parametrize("module", NAMESPACES)
def test_namespace_all_imports(module: str) -> None:
    namespace = importlib.import_module(module)
    assert namespace.__all__, module
    for name in namespace.__all__:
        assert getattr(namespace, name) is not None, f"{module}.{name}"
    # and the namespace is an attribute of the package
    assert getattr(fedloom, module.split(".")[1]) is namespace


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'FedAvgg'"):
        fedloom.FedAvgg  # noqa: B018
    with pytest.raises(ImportError):
        exec("from fedloom import FedAvgg", {})


def test_import_stays_light() -> None:
    """``import fedloom`` imports neither gRPC nor matplotlib (both load on first use)."""
    code = (
        "import sys, fedloom\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'matplotlib'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_readme_lists_the_top_level() -> None:
    """The README's list of top-level names is ``__all__``, and its namespace table names
    only names that exist in those namespaces."""
    import re

    text = (SRC.parent / "README.md").read_text()
    start = text.index("The top level `fedloom` holds") + len("The top level `fedloom`")
    listed = re.findall(r"`(\w+)`", text[start : text.index("rest is in namespaces", start)])
    assert sorted(listed) == sorted(TOP_LEVEL)
    table = text[text.index("| namespace | what |") :].split("\n\n")[0]
    for row in table.splitlines()[2:]:
        modules = re.findall(r"`(fedloom\.\w+)`", row.split("|")[1])
        for name in re.findall(r"`(\w+)`", row.split("|")[2]):
            assert any(hasattr(importlib.import_module(m), name) for m in modules), (row, name)
