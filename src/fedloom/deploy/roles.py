"""Roles from a config: the aggregator, a data holder, or whichever the environment says.

One script or command serves every process (OpenFed's unified frontend/backend): the role is
a flag, or, under ``torchrun``/``fedloom launch``, ``RANK`` (0 aggregates, rank r > 0 is data
holder r - 1) with the aggregator at ``MASTER_ADDR`` and port ``FEDLOOM_PORT`` (default
``MASTER_PORT + 1``: torchrun's own store already listens on ``MASTER_PORT``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import privacy as _privacy  # noqa: F401 - registers the privacy client parts
from ..algorithms.asynchronous import AsyncStrategy
from ..compose.engines import EngineBuilder, compression
from ..compose.privacy import deployed_secagg
from ..compose.strategy import build_strategy
from ..compose.task import determinism, load_task
from ..config import Config, RuntimeConfig, load_config
from ..errors import ConfigError
from ..experiment import Experiment
from ..federation import RunResult
from ..params import ParamSpec
from ..privacy.clientnoise import ClientNoise
from ..privacy.dpsgd import DPSGD
from ..privacy.local import LocalDP
from ..registry import STRATEGIES
from ..runtime.client import RuntimeClient
from ..runtime.clientstate import ClientStateFile
from ..runtime.secagg_round import SecAggSettings
from ..runtime.security import client_tls, server_tls
from ..runtime.server import AggregatorServer
from ..simulation.engine import MODEL_INIT_LOCK
from ..task import Task
from ..topology import Topology
from .aggregator_log import AggregatorLog, relay_names

log = logging.getLogger("fedloom")


@dataclass(frozen=True)
class Role:
    name: str  # "server" or "client"
    address: str  # where the aggregator listens / is reached
    client_id: int | None = None


def role_from_env(env: dict[str, str] | None = None) -> Role | None:
    """The role ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` give, or None."""
    env = dict(os.environ if env is None else env)
    if "RANK" not in env:
        return None
    try:
        rank = int(env["RANK"])
        port = int(env.get("FEDLOOM_PORT") or int(env.get("MASTER_PORT", "29500")) + 1)
    except ValueError as e:
        raise ConfigError(f"bad RANK/MASTER_PORT/FEDLOOM_PORT in the environment: {e}") from None
    host = env.get("MASTER_ADDR", "127.0.0.1")
    if rank == 0:
        return Role("server", f"{host}:{port}")
    return Role("client", f"{host}:{port}", rank - 1)


def check_tokens(cfg: Config, num_clients: int) -> None:
    """Fail closed: a token table must cover every client of the run (and, in a topology,
    every relay, by name), with ids written as canonical integers; else a ConfigError."""
    tokens = cfg.runtime.tokens
    if not tokens:
        return
    names: set[str] = set()
    if cfg.topology is not None:
        topology = Topology.from_config(cfg.topology)
        names = set(topology.nodes) - set(topology.roots())
    ids = {str(i) for i in range(num_clients)}
    if stray := sorted(set(tokens) - ids - names)[:5]:
        raise ConfigError(
            f"runtime.tokens: keys {stray} are neither client ids in [0, {num_clients}) written "
            f"as plain integers{' nor relay names' if names else ''}"
        )
    if missing := sorted(ids - set(tokens), key=int)[:10] + sorted(names - set(tokens))[:5]:
        raise ConfigError(
            f"runtime.tokens: no token for {missing}; a token table must cover every client"
            f"{' and relay' if names else ''} (or leave it empty for an unauthenticated run)"
        )


def tokens_for(rt: RuntimeConfig, keys: list[str]) -> dict[int, str] | None:
    """The token table of a server whose client ``i`` is ``keys[i]`` (a client id or a relay
    name), or None for an unauthenticated run (:func:`check_tokens` made sure it covers)."""
    if not rt.tokens:
        return None
    return {i: rt.tokens[k] for i, k in enumerate(keys)}


def server_options(rt: RuntimeConfig) -> dict[str, Any]:
    """The :class:`AggregatorServer` keyword arguments the ``[runtime]`` section sets."""
    return dict(
        task_id=rt.task_id,
        start_timeout=rt.start_timeout,
        quorum=rt.quorum,
        heartbeat_timeout=rt.heartbeat_timeout,
        round_timeout=rt.round_timeout,
        tls=server_tls(rt),
        chunk_size=rt.chunk_size,
        bulk=rt.bulk,
        bulk_port=rt.bulk_port,
        max_samples=rt.max_samples,
        max_concurrent_uploads=rt.max_concurrent_uploads,
        transfer_timeout=rt.transfer_timeout,
        async_max_share=rt.async_max_share,
    )


#: strategies whose aggregate is a mean of the clients' models and whose clients send nothing
#: else: what secure aggregation, which hands the strategy one mean update, can serve
SECAGG_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedadagrad", "fedyogi", "fedprox")


def secagg_settings(cfg: Config, asynchronous: bool) -> SecAggSettings | None:
    """``[runtime.secagg]`` as the aggregator takes it; refuses what it cannot serve."""
    if (deployed := deployed_secagg(cfg)) is not None:  # privacy.mode = "distributed"
        return deployed
    sa = cfg.runtime.secagg
    if sa is None:
        return None
    if asynchronous or cfg.strategy.name not in SECAGG_STRATEGIES or cfg.topology is not None:
        raise ConfigError(
            f"runtime.secagg needs a synchronous mean-of-models strategy without a topology "
            f"(strategy.name one of {', '.join(SECAGG_STRATEGIES)}); got strategy.name = "
            f"{cfg.strategy.name!r}{' with a topology' if cfg.topology is not None else ''}: "
            "the aggregator sees only the mean, never one client's update"
        )
    return SecAggSettings(
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range,
        stage_timeout=sa.stage_timeout,
    )


def aggregator(address: str | None = None) -> EngineBuilder:
    """An engine builder for :meth:`Experiment.from_config`: the gRPC aggregator."""

    def make(cfg: Config, task: Task) -> Callable[[ParamSpec], AggregatorServer]:
        rt = cfg.runtime
        check_tokens(cfg, task.num_clients)
        cls = STRATEGIES.get(cfg.strategy.name)
        asynchronous = isinstance(cls, type) and issubclass(cls, AsyncStrategy)
        where, wait_for = address or rt.address, rt.min_clients
        keys = [str(i) for i in range(task.num_clients)]
        if cfg.topology is not None:  # the root of a hierarchy: its clients are its relays
            topology = Topology.from_config(cfg.topology)
            topology.validate(network=True)
            root = topology.roots()[0]
            where = address or topology.nodes[root].address or where
            wait_for = max(wait_for, len(topology.children(root)) or 1)
            keys = topology.children(root)

        def with_spec(spec: ParamSpec) -> AggregatorServer:
            return AggregatorServer(
                spec,
                seed=cfg.seed,
                address=where,
                clients=range(len(keys)),
                min_clients=wait_for,
                tokens=tokens_for(rt, keys),
                mode="async" if asynchronous else "sync",
                secagg=secagg_settings(cfg, asynchronous),
                compression=compression(cfg),
                **server_options(rt),
            ).start()

        return with_spec

    return make


def relays_of_root(cfg: Config) -> list[str]:
    """The root's child relays by client id, for a config with a ``[topology]``; else []."""
    if cfg.topology is None:
        return []
    topology = Topology.from_config(cfg.topology)
    return topology.children(topology.roots()[0])


def run_server(
    source: Any,
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    linger: float = 2.0,
    dashboard: str | None = None,
) -> RunResult:
    """Run the aggregator for a config until the run ends; clients are told to stop.
    ``dashboard`` (HOST:PORT) serves a live page of the run with its clients table."""
    exp = Experiment.from_config(
        source,
        overrides,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        backend=aggregator(address),
    )
    server: AggregatorServer = exp.federation.backend  # type: ignore[assignment]
    rt, names = exp.config.runtime, relays_of_root(exp.config)
    wait = f"quorum {rt.quorum}" if rt.quorum else ""
    if rt.round_timeout is not None:
        wait += f"{', ' if wait else ''}at most {rt.round_timeout:g} s"
    exp.federation.callbacks.append(AggregatorLog(server, names, wait))
    page = None
    if dashboard is not None:
        from ..compose.dashboard import open_dashboard

        page = open_dashboard(
            exp.config,
            exp.federation,
            dashboard,
            membership=server.membership,
            relays=names,
            run_dir=exp.run_dir,
        )
    try:
        with relay_names("fedloom.server", dict(enumerate(names))):
            result = exp.run()
        server.finish()
        time.sleep(linger)  # let polling clients hear STOP before the port closes
        return result
    finally:
        if page is not None:
            page.stop(linger=1.0)
        server.stop()


#: a client-local noise seed for local DP and DP-SGD (tests, reproducibility), if no flag
NOISE_SEED_ENV = "FEDLOOM_NOISE_SEED"


def client_noise(cfg: Config, noise_seed: int | None = None) -> ClientNoise:
    """The client's noise seed (``noise_seed``, else ``$FEDLOOM_NOISE_SEED``, else a secret)
    and the DP part its config's ``[privacy]`` asks for, which the work must run."""
    if noise_seed is None and os.environ.get(NOISE_SEED_ENV, "").strip():
        try:
            noise_seed = int(os.environ[NOISE_SEED_ENV])
        except ValueError:
            raise ConfigError(
                f"{NOISE_SEED_ENV}={os.environ[NOISE_SEED_ENV]!r} is not an integer"
            ) from None
    p, expected = cfg.privacy, None
    if p is not None and p.mode in ("local", "dpsgd") and p.noise_multiplier is not None:
        kind = LocalDP if p.mode == "local" else DPSGD
        try:
            stage = kind(p.noise_multiplier, p.clip_norm, p.delta, accountant=p.accountant)
        except ValueError as e:
            raise ConfigError(f"privacy.mode = {p.mode!r}: {e}") from None
        expected = {"name": stage.part, **stage.options()}
    distributed = None
    if p is not None and p.mode == "distributed" and p.noise_multiplier is not None:
        clipping = p.clip_norm if p.clipping_range is None else p.clipping_range
        distributed = {
            "noise_multiplier": p.noise_multiplier,
            "clip_norm": p.clip_norm,
            "dropout_tolerance": p.dropout_tolerance,
            "clipping_range": clipping,
            "quantization_range": p.quantization_range,
            "modulus": p.modulus,
        }
    if noise_seed is not None:
        log.warning(
            "local DP / DP-SGD noise from a fixed client seed (--noise-seed or %s): for tests "
            "and reproducible runs; whoever learns it can remove this client's noise",
            NOISE_SEED_ENV,
        )
    try:
        return ClientNoise(noise_seed, expected, distributed=distributed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_client(
    source: Any,
    overrides: Sequence[str] = (),
    *,
    server: str | None = None,
    client_id: int,
    token: str | None = None,
    noise_seed: int | None = None,
    device: str | None = None,
    state_file: str | os.PathLike[str] | None = None,
) -> int:
    """Run one data holder for a config until the aggregator says STOP. Local DP and DP-SGD
    noise comes from a secret seed of this process unless ``noise_seed`` (or
    ``$FEDLOOM_NOISE_SEED``) fixes it (:func:`client_noise`); ``device`` (``fedloom client
    --device``) replaces ``train.device``: where this data holder trains. ``state_file``
    (``--state-file``) keeps the client's state (its privacy accountant, compression
    residual, strategy state) across a restart of this process
    (:class:`~fedloom.runtime.clientstate.ClientStateFile`)."""
    extra = [f"train.device={device!r}"] if device is not None else []
    cfg = load_config(source, [*overrides, *extra])
    with determinism(cfg):
        return _run_client(
            cfg,
            server=server,
            client_id=client_id,
            token=token,
            noise_seed=noise_seed,
            state_file=state_file,
        )


def _run_client(
    cfg: Config,
    *,
    server: str | None,
    client_id: int,
    token: str | None,
    noise_seed: int | None,
    state_file: str | os.PathLike[str] | None = None,
) -> int:
    task = load_task(cfg)
    strategy = build_strategy(cfg)
    if strategy.prepares_model:  # the task as the aggregator sees it (e.g. FedPer's head)
        with MODEL_INIT_LOCK, torch.random.fork_rng(devices=[]):  # leaves the seeded RNG alone
            model = task.build_model()
        strategy.prepare(task, model, cfg.seed)
    if not 0 <= client_id < task.num_clients:
        raise ConfigError(
            f"client id {client_id} is not one of the task's "
            f"{task.num_clients} clients (0..{task.num_clients - 1})"
        )
    rt = cfg.runtime
    check_tokens(cfg, task.num_clients)
    kept = (
        None
        if state_file is None
        else ClientStateFile(state_file, task_id=rt.task_id, client_id=client_id, run=cfg.name)
    )
    token = (
        token
        if token is not None
        else os.environ.get("FEDLOOM_TOKEN") or rt.tokens.get(str(client_id), "")
    )
    client = RuntimeClient(
        task,
        server or rt.address,
        client_id,
        token=token,
        task_id=rt.task_id,
        tls=client_tls(rt),
        retry_for=rt.retry_for,
        use_bulk=rt.bulk,
        noise=client_noise(cfg, noise_seed),
        compression=compression(cfg),
        state_file=kept,
    )
    return client.run()
