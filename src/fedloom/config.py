"""One config file for a run: TOML (or JSON, including the asmallbit ``conf.json`` keys).

Validated by pydantic; a wrong key or value raises :class:`ConfigError` naming the key path
and the allowed keys or values.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

# strategy options the round loop applies to any strategy (``max_update_norm``)
LOOP_OPTIONS = frozenset({"max_update_norm"})


class _Section(BaseModel):
    # NaN or infinity is never a usable learning rate, timeout or count: refused everywhere
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _finite_options(value: dict[str, Any]) -> dict[str, Any]:
    """``options`` tables reach constructors untyped: refuse NaN/infinity in them here, where
    the error can still name the key, instead of a NaN model many rounds later."""

    def walk(v: Any, path: str) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{path}: {v} is not a finite number")
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, item in items:
            walk(item, f"{path}.{k}" if path else str(k))

    walk(value, "")
    return value


def _registry() -> ModuleType:
    """fedloom.registry with the built-in datasets, models, strategies and aggregators in it.

    Importing them here, not through ``import fedloom``, keeps that import free of torch.
    """
    from . import aggregators, data, models, registry, strategies  # noqa: F401

    return registry


def check_address(value: str, *, any_port: bool = True) -> str:
    """``host:port`` with a port number (0, any free port, only where a server listens)."""
    host, sep, port = value.rpartition(":")
    low = 0 if any_port else 1
    if not (sep and host and port.isdigit() and low <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not host:port with a port {low}..65535")
    return value


class DataConfig(_Section):
    dataset: str = "mnist5k"
    root: str | None = None
    download: bool = False
    num_clients: int = Field(default=100, ge=1)
    partition: str = "dirichlet"
    alpha: float = Field(default=0.5, gt=0)
    shards_per_client: int = Field(default=2, ge=1)
    exponent: float = Field(default=1.5, gt=0)
    min_samples: int = Field(default=1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(_finite_options)


class ModelConfig(_Section):
    name: str = "small_cnn"
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(_finite_options)


class TrainConfig(_Section):
    local_epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=10, ge=1)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    # "auto": CUDA when the machine has a GPU, else the CPU; "cuda" under torchrun: the
    # rank's LOCAL_RANK GPU; in a worker pool one GPU per worker (fedloom.accel.device)
    device: str = "cpu"
    # autocast of local training; parameters and the global model stay float32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.use_deterministic_algorithms (and cuBLAS's workspace on CUDA) for the run
    deterministic: bool = False
    stragglers: float = Field(default=0.0, ge=0, le=1)  # share of clients doing 1..E epochs a round
    # MiB of per-client state (SCAFFOLD c_i, FedDyn, Ditto, FedPer heads) kept in memory; the
    # least recently used clients' states past it are spilled to a temporary directory. None:
    # all in memory. Checkpoints still gather every state (output.checkpoint = false avoids it)
    state_memory_mb: float | None = Field(default=None, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """Checked here: torch's own error comes from deep inside the first client's round."""
        from .accel import resolve_device

        resolve_device(value)  # ValueError naming the allowed values
        return value

    @model_validator(mode="after")
    def _precision(self) -> TrainConfig:
        """A precision the device's torch cannot autocast to, refused before anything runs."""
        from .accel import precision_problem, resolve_device

        why = precision_problem(self.precision, resolve_device(self.device).type)
        if why is not None:
            raise ValueError(f"precision = {why} (train.device = {self.device!r})")
        return self


class StrategyConfig(_Section):
    name: str = "fedavg"
    clients_per_round: int | None = Field(default=10, ge=1)
    fraction: float | None = Field(default=None, gt=0, le=1)
    clusters: int | None = Field(default=None, ge=1)
    every_seconds: float | None = Field(default=None, gt=0)  # async: also aggregate every T seconds
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(_finite_options)

    @model_validator(mode="after")
    def _one_of(self) -> StrategyConfig:
        if self.fraction is not None and self.clients_per_round is not None:
            # fraction given explicitly wins over the default count
            object.__setattr__(self, "clients_per_round", None)
        return self


BUILTIN_METRICS = ("accuracy", "test_loss", "train_loss")  # what the built-in task reports


class EvalConfig(_Section):
    """``target_metric``/``target_value`` stop the run once an evaluation reaches the value:
    ``target_mode = "min"`` (it must fall to it) or ``"max"`` (rise to it); by default a
    ``*loss`` metric falls and any other rises. The built-in task reports
    :data:`BUILTIN_METRICS`; a ``[task]`` of your own reports whatever its ``evaluate`` returns,
    so a metric of its own other than ``accuracy`` must say its ``target_mode``."""

    every: int = Field(default=1, ge=1)
    target_metric: str | None = Field(default=None, min_length=1)
    target_value: float | None = None
    target_mode: Literal["min", "max"] | None = None


class OutputConfig(_Section):
    dir: str = "runs"
    tensorboard: bool = True
    figures: bool = True
    checkpoint: bool = True
    progress: bool | None = None


class NotifyConfig(_Section):
    webhook_url: str | None = None
    telegram_token: str | None = None
    telegram_chat_id: str | None = None
    telegram_api_base: str = "https://api.telegram.org"
    proxy: str | None = None
    on_finish: bool = True
    on_failure: bool = True

    @field_validator("webhook_url", "telegram_api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """Checked now, not when the run ends and the message cannot go out."""
        if value is not None:
            check_http_url(value)
        return value


def check_http_url(value: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (and a numeric port, if any)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise ValueError(f"not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class SecAggSection(_Section):
    """Secure aggregation (SecAgg+) of the network runtime's sync rounds, ``[runtime.secagg]``:
    clients send masked, quantised deltas and the aggregator learns only the mean of the
    round's survivors (uniform, not sample-weighted). Each delta is clipped to
    ``[-clipping_range, clipping_range]`` per coordinate and rounded to
    ``quantization_range`` levels; ``num_shares`` (default about 3 log2 n) and
    ``reconstruction_threshold`` (default a majority of the shares) set how many dropouts a
    round survives; ``stage_timeout`` bounds each protocol stage after the first."""

    num_shares: int | None = Field(default=None, ge=2)
    reconstruction_threshold: int | None = Field(default=None, ge=2)
    clipping_range: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    quantization_range: int = Field(default=1 << 16, ge=2, le=1 << 20)
    stage_timeout: float = Field(default=30.0, gt=0, le=86400, allow_inf_nan=False)


class RuntimeConfig(_Section):
    """The network runtime (``fedloom server`` / ``client`` / ``start`` / ``launch``).

    ``round_timeout``: seconds a round waits for its clients; a round with fewer than
    ``quorum`` valid updates then follows ``short_round``: ``"retry"`` (up to
    ``round_retries`` times, then skip), ``"skip"`` (the model stays, the record says why) or
    ``"abort"``. ``tokens``: client id (or, in a topology, relay name) -> token; when given
    it must cover every client (and relay), else the run refuses to start. ``max_samples``
    bounds the sample count a client declares at check-in, which bounds its updates' weight.
    ``max_concurrent_uploads`` x the update size bounds receive memory. ``transfer_timeout``
    bounds one model transfer (default 60 s + 1 s per MiB). ``async_max_share``: in async
    runs, the most one client may contribute of recent updates, in fair shares (> 1)."""

    address: str = "127.0.0.1:50051"
    task_id: str = "fedloom"
    min_clients: int = Field(default=1, ge=1)
    start_timeout: float | None = Field(default=None, gt=0)
    quorum: int = Field(default=1, ge=1)
    heartbeat_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    round_timeout: float | None = Field(default=600.0, gt=0, allow_inf_nan=False)
    short_round: Literal["retry", "skip", "abort"] = "retry"  # a round short of quorum
    round_retries: int = Field(default=3, ge=0)
    max_samples: int = Field(default=1_000_000_000, ge=1)  # the most a client may declare
    max_concurrent_uploads: int = Field(default=16, ge=1)  # receive memory: this x the update size
    transfer_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    async_max_share: float = Field(default=2.0, gt=1, allow_inf_nan=False)  # 1 can wedge a run
    retry_for: float = Field(default=60.0, gt=0)
    chunk_size: int = Field(default=1 << 20, ge=1)
    bulk: bool = True  # models also on a raw bulk port beside gRPC (clients fall back to gRPC)
    bulk_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port, told at check-in
    tokens: dict[str, str] = Field(default_factory=dict)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_client_ca: str | None = None
    tls_server_name: str | None = None
    secagg: SecAggSection | None = None  # None: updates travel in the clear (TLS aside)

    _address = field_validator("address")(check_address)


class SimulationConfig(_Section):
    """How a simulation trains each round's clients (the network runtime ignores ``engine``
    and ``workers``).

    ``engine``: ``"sequential"``, one client after another with one reused model
    (:class:`~fedloom.InProcessClients`); ``"vectorized"``, all of a round's clients at once
    with ``torch.func`` or, for chains of Linear layers, a fused step
    (:class:`~fedloom.simulation.VectorizedClients`; it falls back to sequential, saying why,
    for what it cannot reproduce); ``"pool"``, ``workers`` forked processes, bit-identical to
    sequential (:class:`~fedloom.ProcessPoolClients`). Under ``torchrun`` each rank trains its
    share sequentially.

    ``threads``: torch's intra-op threads in EVERY process of the run (this one, each pool
    worker, each torchrun rank, the aggregator, each client and relay), whatever the machine
    or ``OMP_NUM_THREADS`` says: the thread count groups float sums, so the same count
    everywhere is what makes those runs bit-identical (:mod:`fedloom.compose.threads`)."""

    engine: str = "sequential"  # a name in the ENGINES registry (:mod:`fedloom.compose.engines`)
    workers: int = Field(default=2, ge=1)
    threads: int = Field(default=1, ge=1)  # 1: the pool's and torchrun's count; see above

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        registry = _registry()
        from .compose import engines  # noqa: F401  # registers the built-in engines

        if value not in registry.ENGINES:
            raise ValueError(f"unknown engine {value!r}; allowed: {registry.ENGINES.names()}")
        return value


class CompressionConfig(_Section):
    """Codec chains per direction (:mod:`fedloom.compression`): ``up = ["topk:0.01", "zstd"]``
    for the clients' updates, ``down = ["fp16"]`` for the global model; empty: plain float32.
    Each item is checked when the config loads (``compression.up[i]`` names a bad one); the
    sequential simulation engine runs them, the other engines and the network runtime refuse
    them for now. ``up`` with ``privacy.secure_aggregation`` (or ``privacy.mode =
    "distributed"``) is refused: the protocol quantises and masks the sum itself."""

    up: list[str] = Field(default_factory=list)
    down: list[str] = Field(default_factory=list)


class AttackConfig(_Section):
    """Byzantine clients, in simulation (:mod:`fedloom.simulation.attacks`): a seeded
    ``fraction`` of all clients sends sign-flipped or noise updates, or trains on flipped
    labels. ``scale``: the sign flip's factor, or the noise's std in honest-update RMS units
    (unused by the label flip). The attackers are listed in the run's report."""

    kind: Literal["sign_flip", "scaled_noise", "label_flip"] | None = None
    fraction: float = Field(default=0.2, ge=0, le=1)
    scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class PrivacyConfig(_Section):
    """Differential privacy around the strategy (:mod:`fedloom.privacy`). ``mode = "central"``:
    DP-FedAvg, the aggregator clips each client's update to ``clip_norm`` (or a clip that
    tracks ``target_quantile`` of the update norms) and adds Gaussian noise of std
    ``noise_multiplier * clip_norm`` to their sum; without ``noise_multiplier`` it is
    calibrated from ``target_epsilon``, the rounds and the sampling rate. Each round's record
    carries the ``epsilon`` spent at ``delta``; ``target_epsilon`` stops the run before it
    would be exceeded. ``accountant``: ``"rdp"`` (fast) or ``"pld"`` (tighter, slower).

    ``secure_aggregation = true``: the round's sum comes from SecAgg+ (Bell et al. 2020), so
    no single update is seen (in simulation the real protocol runs in-process), configured
    by ``num_shares``, ``reconstruction_threshold``, ``clipping_range``,
    ``quantization_range`` and ``modulus``. ``mode = "distributed"``: secure aggregation with
    each client adding its share of the noise (Skellam) before masking, so the aggregator
    never holds an un-noised sum; ``dropout_tolerance`` is the share of dropouts the noise
    still covers. ``mode = "local"``: each client clips and noises its own update (the
    aggregator need not be trusted); ``mode = "dpsgd"``: DP-SGD on each client (per-sample
    clipping and noise); both report each client's own epsilon (``local_epsilon``,
    ``sample_epsilon``) and need ``noise_multiplier``."""

    mode: Literal["central", "distributed", "local", "dpsgd"] = "central"
    noise_multiplier: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    clip_norm: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    target_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    target_quantile: float | None = Field(default=None, gt=0, lt=1)
    clip_learning_rate: float = Field(default=0.2, gt=0, allow_inf_nan=False)
    clip_count_stddev: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    accountant: Literal["rdp", "pld"] = "rdp"
    secure_aggregation: bool = False
    num_shares: int | None = Field(default=None, ge=2)
    reconstruction_threshold: int | None = Field(default=None, ge=1)
    clipping_range: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    quantization_range: int = Field(default=2**16, ge=2)
    modulus: int = Field(default=2**32, ge=2)
    dropout_tolerance: float = Field(default=0.0, ge=0, lt=1)


class TaskConfig(_Section):
    """A Task of your own (:class:`fedloom.Task`), named by import path instead of the built-in
    classification task that ``[data]``, ``[model]`` and ``[train]`` describe.

    ``factory``: ``"module:callable"`` (``"pkg.mod:make_task"``; the attribute may be dotted,
    ``"pkg.mod:Task.create"``), imported from the working directory or ``PYTHONPATH`` as
    ``python -m`` would, or a name registered with :func:`fedloom.registry.register_task`;
    called with ``options`` as keyword arguments (plus ``seed``, the run seed, when it takes a
    ``seed`` parameter that ``options`` does not set). Every process of a run (aggregator,
    clients, relays, torchrun ranks) builds the task this way, so the factory must build the
    same clients from the same options in every process.
    ``train.stragglers`` and ``train.state_memory_mb`` still apply; the other ``[data]``,
    ``[model]`` and ``[train]`` keys configure only the built-in task and are refused here."""

    factory: str
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(_finite_options)

    @field_validator("factory")
    @classmethod
    def _import_path(cls, value: str) -> str:
        registry = _registry()  # task factories registered by name

        if value in registry.TASKS:
            return value
        module, sep, attr = value.partition(":")
        names = [*module.split("."), *attr.split(".")]
        if not sep or not all(n.isidentifier() for n in names):
            named = f" or a registered task ({registry.TASKS.names()})" if registry.TASKS else ""
            raise ValueError(
                "must be an import path 'module:callable', e.g. 'examples.custom_task:make_task'"
                + named
            )
        return value


# train keys every task uses: the loop's straggler share and the client-state memory budget
TASK_INDEPENDENT_TRAIN = ("stragglers", "state_memory_mb")


class TopologyConfig(_Section):
    """A hierarchy of aggregators (:mod:`fedloom.topology`). ``nodes``: ``{name, address?,
    clients?}`` tables, clients a list of task client ids or inclusive ranges (``"0-19"``,
    ``"0-9,20-29"``); ``edges``: ``[child, parent]`` pairs. ``edge_rounds``: rounds each
    non-root aggregator runs with its own group per round of its parent (HierFAVG).
    ``edge_strategy``: the non-root aggregators' strategy, keys as in ``[strategy]``; empty:
    the run's strategy. The graph itself is checked by :meth:`Topology.validate`."""

    nodes: list[dict[str, Any]] = Field(default_factory=list)
    edges: list[list[str]] = Field(default_factory=list)
    edge_rounds: int = Field(default=1, ge=1)
    edge_strategy: dict[str, Any] = Field(default_factory=dict)

    @field_validator("edge_strategy")
    @classmethod
    def _known_strategy(cls, value: dict[str, Any]) -> dict[str, Any]:
        registry = _registry()

        if extra := sorted(set(value) - set(StrategyConfig.model_fields)):
            raise ValueError(
                f"unknown key(s) {extra}; allowed: {list(StrategyConfig.model_fields)}"
            )
        name = value.get("name")
        if name is not None and name not in registry.STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; allowed: {registry.STRATEGIES.names()}")
        return value


class Config(_Section):
    """A whole run. Every section has defaults, so ``Config()`` is the demo."""

    name: str = "fedloom"
    seed: int = Field(default=0, ge=0, lt=1 << 63)  # torch and numpy take seeds in [0, 2**63)
    rounds: int = Field(default=50, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    topology: TopologyConfig | None = None  # None: the usual one-level federation
    task: TaskConfig | None = None  # None: the built-in classification task (data/model/train)
    privacy: PrivacyConfig | None = None  # None: no differential privacy

    def effective(self) -> dict[str, Any]:
        """The config as the run applies it, for ``config.json``, the report and the
        checkpoint that ``--resume`` compares: a ``[task]`` run leaves out the built-in task's
        ``[data]``, ``[model]`` and ``[train]`` keys, which it never reads."""
        out = self.model_dump()
        if self.task is not None:
            del out["data"], out["model"]
            out["train"] = {k: out["train"][k] for k in TASK_INDEPENDENT_TRAIN}
        return out

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        """The run directory is ``output.dir/name``: a name must be one folder inside it, so a
        config can never make a run write (or clear results) anywhere else."""
        if not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError("must be one folder name inside output.dir (no '/', '\\', '..')")
        return value

    @model_validator(mode="after")
    def _check_names(self) -> Config:
        registry = _registry()

        checks = [
            ("data.dataset", self.data.dataset, registry.DATASETS),
            ("data.partition", self.data.partition, registry.PARTITIONERS),
            ("model.name", self.model.name, registry.MODELS),
            ("strategy.name", self.strategy.name, registry.STRATEGIES),
        ]
        for key, value, reg in checks:
            if value not in reg:
                raise ValueError(f"{key}: unknown {reg.kind} {value!r}; allowed: {reg.names()}")
        if (self.eval.target_metric is None) != (self.eval.target_value is None):
            raise ValueError("eval.target_metric and eval.target_value go together")
        self._check_options()
        self._check_target()
        self._check_compression()
        if self.task is not None:
            self._check_custom_task(self.task)
            if self.topology is not None:  # its client ids are checked once the task is built
                from .topology.graph import Topology

                Topology.from_config(self.topology).validate()
            return self
        self.check_clients(self.data.num_clients, f"data.num_clients = {self.data.num_clients}")
        return self

    def _check_compression(self) -> None:
        from .compression.config import check_chains

        check_chains(self.compression.up, self.compression.down)

    def _check_target(self) -> None:
        """A target the task never reports would never stop the run; one of a custom task's
        own metrics must say which way it improves."""
        e = self.eval
        if e.target_metric is None:
            return
        if self.task is None and e.target_metric not in BUILTIN_METRICS:
            raise ValueError(
                f"eval.target_metric: the built-in task reports {list(BUILTIN_METRICS)}, "
                f"not {e.target_metric!r}"
            )
        named = e.target_metric == "accuracy" or e.target_metric.endswith("loss")
        if self.task is not None and e.target_mode is None and not named:
            raise ValueError(
                f"eval.target_mode: say whether the task's metric {e.target_metric!r} "
                "must fall ('min') or rise ('max') to eval.target_value"
            )

    def _check_custom_task(self, task: TaskConfig) -> None:
        """Keys of the built-in task's sections that a ``[task]`` would silently ignore."""
        sections = {"data": DataConfig(), "model": ModelConfig(), "train": TrainConfig()}
        ignored = [
            f"{name}.{key}"
            for name, default in sections.items()
            for key in type(default).model_fields
            if not (name == "train" and key in TASK_INDEPENDENT_TRAIN)
            and getattr(getattr(self, name), key) != getattr(default, key)
        ]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)}: set for the built-in classification task, but "
                f"task.factory = {task.factory!r} replaces it; pass what your task needs in "
                "task.options"
            )

    def _check_options(self) -> None:
        """Option keywords the model, dataset or strategy does not take, named now rather
        than as a TypeError from deep inside the run."""
        registry = _registry()

        model = registry.MODELS.get(self.model.name)
        loader = registry.DATASETS.get(self.data.dataset)
        strategy = registry.STRATEGIES.get(self.strategy.name)
        checks = [
            ("model.options", self.model.name, model, {"input_shape", "num_classes"}),
            ("data.options", self.data.dataset, loader, {"root", "download", "seed"}),
            ("strategy.options", self.strategy.name, strategy, set()),  # + LOOP_OPTIONS
        ]
        for key, name, factory, given in checks:
            options = getattr(self, key.split(".")[0]).options
            params = inspect.signature(factory).parameters
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                continue
            taken = [p for p in params if p not in given and not p.startswith("_")]
            if key == "strategy.options":
                taken += sorted(LOOP_OPTIONS)
            if unknown := sorted(set(options) - set(taken)):
                raise ValueError(f"{key}: {unknown} not taken by {name}; it takes {taken}")

    def check_clients(self, k: int, where: str) -> None:
        """Counts of clients (and topology client ids) that no run with ``k`` clients can
        meet; ``where`` names the count (``"data.num_clients = 8"``, ``"the task's 8"``).
        Checked at load for the built-in task, once it is built for a ``[task]``."""
        per_round = self.strategy.clients_per_round
        given = "clients_per_round" in self.strategy.model_fields_set
        if per_round is not None and given and per_round > k:
            raise ValueError(
                f"strategy.clients_per_round: {per_round} is more than {where} clients"
            )
        if self.topology is None:  # a hierarchy's root counts its relays instead
            for key in ("min_clients", "quorum"):
                if (n := getattr(self.runtime, key)) > k:
                    raise ValueError(f"runtime.{key}: {n} is more than {where} clients")
            return
        from .topology.graph import Topology

        topo = Topology.from_config(self.topology).validate()
        for node in topo.nodes.values():
            if node.clients and max(node.clients) >= k:
                raise ValueError(
                    f"topology: node {node.name!r} has client {max(node.clients)}, but "
                    f"{where} clients have ids 0-{k - 1}"
                )


# -- asmallbit conf.json compatibility ---------------------------------------------------
ASMALLBIT_KEYS = {
    "model_name": "model.name",
    "type": "data.dataset",
    "global_epochs": "rounds",
    "local_epochs": "train.local_epochs",
    "alpha": "data.alpha",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
}
_ASMALLBIT_ONLY = {
    "lambda",
    "k",
    "is_push_enable",
    "push_type",
    "proxy_type",
    "proxy_host",
    "proxy_port",
    "proxy_username",
    "proxy_password",
    "telegram_id",
    "api_key",
    *ASMALLBIT_KEYS,
}


def from_asmallbit(flat: dict[str, Any]) -> dict[str, Any]:
    """Translate the asmallbit project's flat ``conf.json`` into fedloom's nested config."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in ASMALLBIT_KEYS:
            set_path(out, ASMALLBIT_KEYS[key], value)
        elif key == "lambda":
            if value:
                set_path(out, "strategy.name", "fedprox")
                set_path(out, "strategy.options.mu", value)
        elif key == "k":
            set_path(out, "strategy.clusters", int(value) if value else None)
            if value and int(value) > 1 and not flat.get("lambda"):
                set_path(out, "strategy.name", "clustered")  # k-means clustered FL
        elif key in _ASMALLBIT_ONLY:
            continue  # push and proxy keys are handled together below
        else:
            out[key] = value  # fedloom's own keys may be mixed in
    if flat.get("is_push_enable") and flat.get("push_type", "telegram") == "telegram":
        set_path(out, "notify.telegram_token", flat.get("api_key"))
        set_path(out, "notify.telegram_chat_id", str(flat.get("telegram_id")))
    if flat.get("proxy_type") and flat.get("proxy_host"):
        auth = ""
        if flat.get("proxy_username"):
            auth = f"{flat['proxy_username']}:{flat.get('proxy_password') or ''}@"
        proxy = f"{flat['proxy_type']}://{auth}{flat['proxy_host']}:{flat.get('proxy_port')}"
        set_path(out, "notify.proxy", proxy)
    if "alpha" in flat:
        out.setdefault("data", {}).setdefault("partition", "dirichlet")
    return out


# -- loading ------------------------------------------------------------------------------
def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        d = nxt
    d[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key.path=value``; the value is read as TOML (numbers, booleans, strings, lists).

    Text that is not TOML (``name=exp1``) stays text, and so does a TOML number or boolean
    given to a key that holds only text (``notify.telegram_chat_id=42``): shells eat quotes,
    and the user meant the characters typed.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.1")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, (int, float, bool)) and _text_only(key):
        value = raw.strip()
    return key, value


def _text_only(dotted: str) -> bool:
    """Whether the config key ``dotted`` takes text and no number or boolean."""
    model: type[BaseModel] | None = Config
    annotation: Any = None
    for part in dotted.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(
            annotation, BaseModel
        ) else None
    kinds = set(get_args(annotation)) or {annotation}
    return str in kinds and not kinds & {int, float, bool}


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Load and validate a config from a file path, a dict or a Config, applying overrides."""
    if isinstance(source, Config):
        data = source.model_dump()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif source is None:
        data = {}
    else:
        data = read_file(Path(source))
    if _ASMALLBIT_ONLY & set(data) and not {"data", "train", "model"} & set(data):
        data = from_asmallbit(data)
    if isinstance(source, (str, Path)) and "name" not in data:
        data["name"] = run_name(Path(source))
    for item in overrides:
        set_path(data, *parse_override(item))
    return validate(data)


def run_name(path: Path) -> str:
    """A config file without ``name`` runs in ``runs/<its file name>``, not ``runs/fedloom``:
    two configs never share (and refuse, or overwrite) one run directory by accident."""
    stem = path.stem
    if not stem.strip() or stem in (".", "..") or "\\" in stem:
        return "fedloom"
    return stem


def read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a {kind} table, not a {type(data).__name__}")
    return data


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            section = _section_for(err["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else "?"
            lines.append(f"{loc}: unknown key; allowed keys here: {allowed}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
            else:
                lines.append(msg)
    if len(lines) == 1:  # one problem, one line
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def _section_for(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
