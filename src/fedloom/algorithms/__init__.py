"""Strategies, one per file, behind the :class:`Strategy` protocol."""

from .asynchronous import AsyncStrategy, staleness_weight
from .base import RoundPlan, Strategy
from .client import ClientAlgorithm, LocalRun, register_client_algorithm
from .ditto import Ditto
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedasync import FedAsync
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedbuff import FedBuff
from .feddyn import FedDyn
from .fednova import FedNova
from .fedopt import AdaptiveFedOpt, FedOpt
from .fedper import FedPer
from .fedprox import FedProx
from .fedyogi import FedYogi
from .ifca import IFCA
from .kmeans import KMeansClustered
from .qffl import QFFL
from .scaffold import Scaffold

__all__ = [
    "IFCA",
    "QFFL",
    "AdaptiveFedOpt",
    "AsyncStrategy",
    "ClientAlgorithm",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedDyn",
    "FedNova",
    "FedOpt",
    "FedPer",
    "FedProx",
    "FedYogi",
    "KMeansClustered",
    "LocalRun",
    "RoundPlan",
    "Scaffold",
    "Strategy",
    "register_client_algorithm",
    "staleness_weight",
]
