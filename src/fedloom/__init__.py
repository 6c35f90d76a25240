"""fedloom: federated learning on PyTorch.

The same :class:`Task` runs as a fast, deterministic in-process simulation and (with the
network runtime) as a real deployment. Everything a user needs is importable from here.
"""

from . import models
from .aggregation import Aggregator, WeightedMean
from .algorithms import AsyncStrategy, FedAsync, FedAvg, FedBuff, RoundPlan, Strategy
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
from .errors import ClientError, ConfigError, DatasetError, FedloomError, WireError
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
from .simulation import InProcessClients, ProcessPoolClients, VectorizedClients
from .task import ClientContext, Task
from .update import ClientUpdate
from .wire import decode, encode

__version__ = "0.1.0"

__all__ = [
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
    "partition_report",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "register_strategy",
    "register_aggregator",
    "run",
    "save_checkpoint",
]
