"""fedloom: federated learning on PyTorch.

The same :class:`Task` runs as a fast, deterministic in-process simulation and (with the
network runtime) as a real deployment. The top level holds the few names the README teaches;
the rest live in namespaces: :mod:`fedloom.strategies`, :mod:`fedloom.aggregators`,
:mod:`fedloom.engines`, :mod:`fedloom.runtime`, :mod:`fedloom.data`, :mod:`fedloom.models`,
:mod:`fedloom.optim`, :mod:`fedloom.errors`. Every name published here before stays
importable from ``fedloom`` (looked up lazily in its namespace), so old code keeps working.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import FedloomError

if TYPE_CHECKING:  # imported on first use, so ``fedloom --help`` does not load torch
    from .classification import ClassificationTask
    from .config import Config, load_config
    from .data import load_mnist5k
    from .deploy.local import LocalFederation
    from .experiment import Experiment, run
    from .federation import Federation, RunResult
    from .models import build_model, register_model
    from .runtime import connect
    from .strategies import FedAvg, RoundPlan, Strategy
    from .task import ClientContext, Task
    from .topology import Node, Topology
    from .update import ClientUpdate

__version__ = "0.1.0"

__all__ = [
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

# the namespaces, imported on first attribute access (``fedloom.strategies.FedProx``)
_NAMESPACES = (
    "aggregators",
    "data",
    "engines",
    "errors",
    "models",
    "optim",
    "runtime",
    "strategies",
)

# published names outside the top level: name -> the module that owns it now
_ELSEWHERE: dict[str, str] = {
    # the top level's own names: torch comes with most of them, so each loads on first use
    "ClassificationTask": "classification",
    **dict.fromkeys(["Config", "load_config"], "config"),
    "load_mnist5k": "data",
    **dict.fromkeys(["Experiment", "run"], "experiment"),
    **dict.fromkeys(["Federation", "RunResult"], "federation"),
    **dict.fromkeys(["build_model", "register_model"], "models"),
    **dict.fromkeys(["FedAvg", "RoundPlan", "Strategy"], "strategies"),
    **dict.fromkeys(["ClientContext", "Task"], "task"),
    **dict.fromkeys(["Node", "Topology"], "topology"),
    "ClientUpdate": "update",
    "connect": "runtime",
    "LocalFederation": "deploy.local",
    **dict.fromkeys(
        [
            "IFCA",
            "QFFL",
            "STRATEGIES",
            "AsyncStrategy",
            "ClientAlgorithm",
            "Ditto",
            "FedAdagrad",
            "FedAdam",
            "FedAsync",
            "FedAvgM",
            "FedBuff",
            "FedDyn",
            "FedNova",
            "FedPer",
            "FedProx",
            "FedYogi",
            "KMeansClustered",
            "LocalRun",
            "Scaffold",
            "personalised_accuracy",
            "register_client_algorithm",
            "register_strategy",
        ],
        "strategies",
    ),
    **dict.fromkeys(
        [
            "AGGREGATORS",
            "Aggregator",
            "CoordinateMedian",
            "ElasticAggregator",
            "Krum",
            "MultiKrum",
            "TrimmedMean",
            "WeightedMean",
            "register_aggregator",
        ],
        "aggregators",
    ),
    **dict.fromkeys(
        [
            "AttackedClients",
            "DistributedClients",
            "InProcessClients",
            "LabelFlip",
            "ProcessPoolClients",
            "ScaledNoise",
            "SignFlip",
            "VectorizedClients",
        ],
        "engines",
    ),
    **dict.fromkeys(
        [
            "DATASETS",
            "IID",
            "PARTITIONERS",
            "Dirichlet",
            "Natural",
            "Partitioner",
            "PowerLaw",
            "Shards",
            "TensorDataset",
            "load_fashion_mnist",
            "load_femnist",
            "load_mnist",
            "load_synthetic",
            "partition_report",
            "register_dataset",
            "register_partitioner",
        ],
        "data",
    ),
    **dict.fromkeys(
        ["CheckpointError", "ClientError", "ConfigError", "DatasetError", "RunDirError"],
        "errors",
    ),
    "WireError": "errors",
    **dict.fromkeys(["Callback", "RoundState", "load_checkpoint", "save_checkpoint"], "federation"),
    "AsyncFederation": "federation.async_loop",
    "RunRecorder": "federation.recorder",
    "MODELS": "models",
    "ParamSpec": "params",
    "flatten_module": "params",
    "decode": "wire",
    "encode": "wire",
    "derive_seed": "seeding",
    "analysis": "topology",
}


def __getattr__(name: str) -> Any:
    """A namespace module, or a published name from the module that owns it, on first use.

    Lazy so that ``import fedloom`` stays light (no torch, so ``fedloom --help`` answers at
    once; ``connect`` and ``LocalFederation`` import gRPC) and so that names moved off the
    top level keep working without crowding it.
    """
    if name in _NAMESPACES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _ELSEWHERE:
        value = getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'fedloom' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The top level and the namespaces; the older names still resolve but are not listed."""
    return sorted([*__all__, *_NAMESPACES, "__version__"])
