"""fedloom: federated learning on PyTorch.

The same :class:`Task` runs as a fast, deterministic in-process simulation and (with the
network runtime) as a real deployment. Everything a user needs is importable from here.
"""

from . import models, optim
from .aggregation import (
    Aggregator,
    CoordinateMedian,
    ElasticAggregator,
    Krum,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)
from .algorithms import (
    IFCA,
    QFFL,
    AsyncStrategy,
    ClientAlgorithm,
    Ditto,
    FedAdagrad,
    FedAdam,
    FedAsync,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedDyn,
    FedNova,
    FedPer,
    FedProx,
    FedYogi,
    KMeansClustered,
    LocalRun,
    RoundPlan,
    Scaffold,
    Strategy,
    register_client_algorithm,
)
from .classification import ClassificationTask
from .config import Config, load_config
from .data import (
    IID,
    Dirichlet,
    Natural,
    Partitioner,
    PowerLaw,
    Shards,
    TensorDataset,
    load_fashion_mnist,
    load_femnist,
    load_mnist,
    load_mnist5k,
    load_synthetic,
    partition_report,
)
from .errors import (
    CheckpointError,
    ClientError,
    ConfigError,
    DatasetError,
    FedloomError,
    RunDirError,
    WireError,
)
from .experiment import Experiment, run
from .federation import (
    Callback,
    Federation,
    RoundState,
    RunResult,
    load_checkpoint,
    save_checkpoint,
)
from .federation.async_loop import AsyncFederation
from .federation.recorder import RunRecorder
from .models import build_model
from .params import ParamSpec, flatten_module
from .personal import personalised_accuracy
from .registry import (
    AGGREGATORS,
    DATASETS,
    MODELS,
    PARTITIONERS,
    STRATEGIES,
    register_aggregator,
    register_dataset,
    register_model,
    register_partitioner,
    register_strategy,
)
from .seeding import derive_seed
from .simulation import (
    AttackedClients,
    DistributedClients,
    InProcessClients,
    LabelFlip,
    ProcessPoolClients,
    ScaledNoise,
    SignFlip,
    VectorizedClients,
)
from .task import ClientContext, Task
from .topology import Node, Topology, analysis
from .update import ClientUpdate
from .wire import decode, encode

__version__ = "0.1.0"


def __getattr__(name: str):
    """``fedloom.connect`` (the own-loop client) and ``fedloom.LocalFederation`` (the same loop
    in-process) import the gRPC runtime on first use."""
    if name == "connect":
        from .runtime.ownloop import connect

        return connect
    if name == "LocalFederation":
        from .deploy.local import LocalFederation

        return LocalFederation
    raise AttributeError(f"module 'fedloom' has no attribute {name!r}")


__all__ = [
    "IFCA",
    "DistributedClients",
    "QFFL",
    "ClientAlgorithm",
    "CoordinateMedian",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedDyn",
    "FedNova",
    "FedPer",
    "FedProx",
    "FedYogi",
    "KMeansClustered",
    "Krum",
    "LocalRun",
    "MultiKrum",
    "Scaffold",
    "TrimmedMean",
    "personalised_accuracy",
    "register_client_algorithm",
    "ProcessPoolClients",
    "VectorizedClients",
    "AsyncFederation",
    "AsyncStrategy",
    "FedAsync",
    "FedBuff",
    "DATASETS",
    "IID",
    "MODELS",
    "PARTITIONERS",
    "STRATEGIES",
    "AGGREGATORS",
    "Aggregator",
    "Callback",
    "CheckpointError",
    "ClassificationTask",
    "ClientContext",
    "ClientError",
    "ClientUpdate",
    "Config",
    "ConfigError",
    "DatasetError",
    "Dirichlet",
    "Experiment",
    "FedAvg",
    "Federation",
    "FedloomError",
    "InProcessClients",
    "Natural",
    "ParamSpec",
    "Partitioner",
    "PowerLaw",
    "RoundPlan",
    "RoundState",
    "RunDirError",
    "RunRecorder",
    "RunResult",
    "Shards",
    "Strategy",
    "Task",
    "TensorDataset",
    "WeightedMean",
    "WireError",
    "build_model",
    "decode",
    "derive_seed",
    "encode",
    "flatten_module",
    "load_checkpoint",
    "load_config",
    "load_fashion_mnist",
    "load_femnist",
    "load_mnist",
    "load_mnist5k",
    "load_synthetic",
    "models",
    "optim",
    "partition_report",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "register_strategy",
    "register_aggregator",
    "run",
    "save_checkpoint",
    "AttackedClients",
    "ElasticAggregator",
    "LabelFlip",
    "ScaledNoise",
    "SignFlip",
    "Node",
    "Topology",
    "analysis",
    "connect",
    "LocalFederation",
]
