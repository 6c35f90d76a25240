"""Bring your own loop: federate training code you keep, one job per round.

OpenFed and FedLab let a data holder keep its own PyTorch loop and only exchange models;
so does :func:`connect`::

    with fedloom.connect("host:50051", client_id=3, num_samples=len(data)) as fl:
        for job in fl.jobs():                  # one per round this client is sampled for
            job.load_into(model)               # the global model (checked against the spec)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            with job.client_part(model, optimizer):   # FedProx, SCAFFOLD, ... (no-op: FedAvg)
                ...                            # your own training
            job.upload(model, num_samples=len(data), metrics={"loss": loss})

The connection is :class:`~fedloom.runtime.channel.ClientChannel`, the transport the
engine-driven :class:`~fedloom.runtime.client.RuntimeClient` uses: check-in with retries and
backoff, identity metadata and tokens on every call, TLS, the bulk port with gRPC fallback,
heartbeats from a background thread while the user trains, checking in again after an
aggregator restart. A :class:`Job` hands the user the round, the model version, the global
model as a state dict shaped by the spec the aggregator sent at check-in, the round's config
and the strategy's extra tensors, and the seeds the built-in engine trains with; it checks
what the user uploads (same spec, finite values, ``num_samples >= 1`` and within what was
announced, finite numeric metrics) before a byte is sent. A strategy with a client part
(``job.algorithm``) is never trained without it by accident: :meth:`Job.client_part` runs it
on the user's optimizer as the engine does (:mod:`.clientpart`), a part that needs the task's
data is refused at the first job, and an upload without the part applied is refused.

With the run's ``[compression]`` (``connect(..., compression=...)``) models arrive and updates
leave as the chains' packets (:class:`~.coding.ClientCoding`, ``fedloom client``'s own), the
error-feedback residual kept in the connection's client state: the run equals its simulation
bit for bit.

The same loop runs against the in-process simulation with
:class:`~fedloom.deploy.local.LocalFederation`, whose ``jobs()`` yields the jobs of every
sampled client in turn.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import torch
from torch import nn

from ..algorithms.client import local_epochs
from ..compression.link import Compression
from ..errors import FedloomError, JobError
from ..params import ParamSpec
from ..privacy.clientnoise import ClientNoise
from ..seeding import derive_seed
from ..task import ClientContext
from ..update import checked_metrics
from ..wire import MAX_EXTRAS, check_finite_values
from .channel import ClientChannel, log
from .clientpart import ClientPart, algorithm_name, check_supported, proximal_term
from .coding import ClientCoding
from .proto import fedloom_pb2
from .security import TLSConfig

pb: Any = fedloom_pb2  # generated, untyped

__all__ = ["Connection", "Job", "JobError", "connect"]


def model_tensors(
    model: nn.Module | Mapping[str, torch.Tensor], spec: ParamSpec, personal: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``model``'s federated tensors by name (detached), checked against ``spec``: every
    floating-point tensor of its state dict outside ``personal`` must be one of the spec's,
    with its shape and dtype, and none may be missing. Raises :class:`JobError` naming each
    problem."""
    state = model.state_dict(keep_vars=True) if isinstance(model, nn.Module) else dict(model)
    tensors = {
        n: t.detach()
        for n, t in state.items()
        if isinstance(t, torch.Tensor)
        and t.is_floating_point()
        and not any(n == p or n.startswith(p.rstrip(".") + ".") for p in personal)
    }
    try:
        spec.check(tensors, "the model")
    except ValueError as e:
        raise JobError(
            f"{e} (the aggregator's model has {len(spec.entries)} tensors, {spec.numel} values; "
            f"build the same architecture, or list local-only layers in personal_layers)"
        ) from None
    return tensors


class Job:
    """One round of work for one client: what to start from, and the upload that ends it.

    Attributes:
        client_id: the client this job is for.
        round: the round (sync) or the round the aggregator counts towards (async).
        version: the global model's version (``round - 1`` in a sync run).
        config: the round's config from the strategy (e.g. ``local_epochs`` for stragglers,
            ``algorithm`` for a strategy's client part); ``{}`` when it sends none.
        tensors: the strategy's extra flat buffers (SCAFFOLD's control variates, ...), by
            name, each laid out like the model (:meth:`tensor_state` shapes one).
        spec: the aggregator's model spec.
        seed: the seed the built-in engine trains this client and round with
            (``derive_seed(run seed, "client", round, client)``): ``torch.manual_seed(job.seed)``
            and shuffling with :attr:`generator` repeat the simulation's draws.
        generator: a ``torch.Generator`` seeded with :attr:`seed`, one per job (the engine's
            ``ctx.generator``).
        algorithm: the strategy's client part this round asks for (``{"name": "fedprox",
            "mu": 0.01}``, ...), or None. Apply it with :meth:`client_part` (or, for FedProx,
            :meth:`regularizer`); an upload of a job whose part was not applied is refused,
            unless the loop applies it itself (``manual_client_part=True``).
        state: this client's state kept between its jobs (the engine's ``ctx.state``: e.g.
            SCAFFOLD's ``c_i``; with ``compression.up``, the error-feedback residual): in
            memory for as long as a connection lives; a LocalFederation checkpoints it.
        uploaded: whether :meth:`upload` ran.
    """

    def __init__(
        self,
        client_id: int,
        round: int,
        version: int,
        config: dict[str, Any],
        spec: ParamSpec,
        params: torch.Tensor,
        tensors: dict[str, torch.Tensor],
        seed: int,
        sink: Callable[..., bool],
        personal: tuple[str, ...] = (),
        max_samples: int | None = None,
        *,
        state: dict[str, Any] | None = None,
        manual_client_part: bool = False,
    ):
        self.client_id, self.round, self.version = client_id, round, version
        self.config, self.spec, self.tensors = config, spec, tensors
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        algorithm = config.get("algorithm")
        self.algorithm: dict[str, Any] | None = dict(algorithm) if algorithm else None
        self.state: dict[str, Any] = {} if state is None else state
        self.uploaded = False
        self.accepted: bool | None = None
        self.started = time.perf_counter()
        self._params, self._sink = params, sink
        self._personal, self._max_samples = personal, max_samples
        self._manual = manual_client_part
        self._part: ClientPart | None = None
        self._regularized = False

    def __repr__(self) -> str:
        return f"Job(client {self.client_id}, round {self.round}, version {self.version})"

    def model_state(self) -> dict[str, torch.Tensor]:
        """The global model as a state dict (fresh tensors shaped by the spec, yours to keep);
        ``model.load_state_dict(job.model_state(), strict=False)`` loads it (integer buffers
        such as ``num_batches_tracked`` and personal layers are not federated)."""
        return {k: v.clone() for k, v in self.spec.unflatten(self._params).items()}

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy the global model into ``model`` in place, after checking that ``model`` has
        exactly the aggregator's federated tensors (names, shapes, dtypes)."""
        tensors = model_tensors(model, self.spec, self._personal)
        with torch.no_grad():
            for name, view in self.spec.unflatten(self._params).items():
                tensors[name].copy_(view)
        return model

    def tensor_state(self, name: str) -> dict[str, torch.Tensor]:
        """The strategy's extra buffer ``name`` shaped like the model's state dict."""
        if name not in self.tensors:
            raise KeyError(f"{self!r} has no extra tensor {name!r}; it has {sorted(self.tensors)}")
        return {k: v.clone() for k, v in self.spec.unflatten(self.tensors[name]).items()}

    def local_epochs(self, default: int) -> int:
        """Epochs this round asks of this client: the strategy's (a straggler's own count or
        ``local_epochs`` in the config) if it sends one, else ``default``."""
        return local_epochs(self.config, self.client_id, default)

    def client_part(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> ClientPart:
        """The round's client part around your training, as the built-in engine runs it::

            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            with job.client_part(model, optimizer):
                ...                                 # your epochs; optimizer.step() as usual
            job.upload(model, num_samples=n)        # with the part's metrics and tensors

        Build ``optimizer`` over ``model`` after :meth:`load_into`; the part adds its gradient
        corrections (FedProx's proximal term, SCAFFOLD's ``c - c_i``, FedDyn's) as step
        pre-hooks and finishes when the block ends. With no part this is a no-op, so one loop
        serves every strategy. A part that needs the task's data (Ditto, IFCA, q-FFL,
        SCAFFOLD option I) raises :class:`JobError`."""
        if self._part is not None:
            raise JobError(f"{self!r}: client_part() was already used; use it once per job")
        model_tensors(model, self.spec, self._personal)
        ctx = ClientContext(
            self.client_id,
            self.round,
            self.generator,
            self.state,
            self.config,
            self._params,
            self.tensors,
        )
        self._part = ClientPart(
            self.algorithm, model, optimizer, ctx, self.spec, self._params, self.tensors
        )
        return self._part

    def regularizer(self, model: nn.Module) -> torch.Tensor:
        """The round's client part as a loss term, where it is one: FedProx's
        ``mu/2 * ||w - w_global||^2`` (add it to your loss before ``backward()``; for loops
        whose optimizer cannot take hooks). Zero with no client part; any other part raises
        :class:`JobError` (use :meth:`client_part`)."""
        if self.algorithm is None:
            return torch.zeros(())
        if self.algorithm.get("name") != "fedprox":
            raise JobError(
                f"{self!r}: the client part {algorithm_name(self.algorithm)} is not a loss term; "
                f"wrap your optimizer with job.client_part(model, optimizer)"
            )
        self._regularized = True
        return proximal_term(model, self.spec, self._params, float(self.algorithm["mu"]))

    def _part_applied(self) -> bool:
        return (self._part is not None and self._part.done) or self._regularized

    def upload(
        self,
        model: nn.Module | Mapping[str, torch.Tensor],
        *,
        num_samples: int,
        metrics: Mapping[str, float] | None = None,
        tensors: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]] | None = None,
    ) -> bool:
        """Check and send this job's update; True if the aggregator accepted it.

        ``model`` is the trained module or its state dict; ``num_samples`` (an int >= 1,
        at most what was announced) weighs it; ``metrics`` are at most 64 finite numbers
        (a ``seconds`` since the job began is added unless given); ``tensors`` are extra
        buffers for the strategy (flat, or state dicts laid out like the model). Anything
        that does not fit raises :class:`JobError` and nothing is sent; a refusal by the
        aggregator (the round closed, say) is logged and returns False.
        """
        if self.uploaded:
            raise JobError(f"{self!r} was already uploaded; each job takes one upload")
        if self.algorithm is not None and not self._manual and not self._part_applied():
            raise JobError(
                f"{self!r}: the strategy's client part {algorithm_name(self.algorithm)} was not "
                f"applied; train inside `with job.client_part(model, optimizer):` (FedProx: or "
                f"add job.regularizer(model) to the loss), or pass manual_client_part=True if "
                f"your loop applies it itself"
            )
        flat = self.spec.flatten(model_tensors(model, self.spec, self._personal))
        try:
            check_finite_values(flat, self.spec, "the uploaded model")
        except ValueError as e:
            raise JobError(str(e)) from None
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise JobError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if self._max_samples is not None and num_samples > self._max_samples:
            raise JobError(
                f"num_samples {num_samples} exceeds the {self._max_samples} announced at "
                f"check-in (the aggregator would refuse it)"
            )
        part = self._part if self._part is not None and self._part.done else None
        try:
            sent = checked_metrics(
                {
                    "seconds": time.perf_counter() - self.started,
                    **dict(metrics or {}),
                    **(part.metrics if part else {}),
                }
            )
        except ValueError as e:
            raise JobError(f"metrics: {e}") from None
        extras = self._extras({**(part.out if part else {}), **dict(tensors or {})})
        self.uploaded = True
        self.accepted = bool(self._sink(self, flat, num_samples, sent, extras))
        return self.accepted

    def _extras(self, tensors: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if len(tensors) > MAX_EXTRAS:
            raise JobError(f"{len(tensors)} extra tensors; at most {MAX_EXTRAS} are taken")
        out = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                t = self.spec.flatten(model_tensors(t, self.spec, self._personal))
            t = t.detach().reshape(-1)
            if t.numel() != self.spec.numel or t.dtype != self.spec.dtype:
                raise JobError(
                    f"extra tensor {name!r}: {t.numel()} {t.dtype} values; it must be laid "
                    f"out like the model ({self.spec.numel} {self.spec.dtype} values)"
                )
            if not torch.isfinite(t).all():
                raise JobError(f"extra tensor {name!r} holds NaN or Inf")
            out[str(name)] = t
        return out


class Connection(ClientChannel):
    """A data holder that trains with its own loop; made by :func:`connect`.

    ``seed`` (the run seed) and ``spec`` (the aggregator's model spec) are known once
    checked in; ``rounds_done`` counts the jobs this connection handed out and saw through.
    ``compression`` (the run's chains) goes to ``coding`` (:class:`~.coding.ClientCoding`,
    as for ``fedloom client``): jobs start from the decoded global, uploads are its packets.
    """

    def __init__(
        self,
        server: str,
        client_id: int,
        *,
        num_samples: int,
        personal_layers: tuple[str, ...] = (),
        manual_client_part: bool = False,
        compression: Compression | None = None,
        **channel: Any,
    ):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        super().__init__(server, client_id, **channel)
        self.num_samples = num_samples
        self.personal_layers = tuple(personal_layers)
        self.seed: int | None = None
        self.spec: ParamSpec | None = None
        self.rounds_done = 0
        self.manual_client_part = manual_client_part
        self.client_state: dict[str, Any] = {}  # the strategy client part's, between jobs
        self.noise = ClientNoise()  # local DP noise: this client's secret seed
        # [compression]: models decoded, uploads encoded (the residual in client_state)
        self.coding = ClientCoding(client_id, compression)
        self._opened: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> Connection:
        """Open the channel and check in (retrying until ``retry_for``); idempotent."""
        if self._opened is None:
            cm = self._connected()
            cm.__enter__()
            self._opened = cm
            try:
                self._check_in()
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        cm, self._opened = self._opened, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- jobs --------------------------------------------------------------------------------
    def jobs(self) -> Iterator[Job]:
        """This client's jobs until the aggregator says STOP. Heartbeats go out while the
        loop body runs; a job left without an upload is logged (a sync round then waits for
        this client until its ``round_timeout``)."""
        self.open()
        assert self.spec is not None
        limit = self.spec.nbytes * (1 + MAX_EXTRAS) + (1 << 20)
        next_instruction: Callable[[], Any] = self._next_instruction
        fetch: Callable[[Any, int], Any] = self._fetch
        while True:
            try:
                ins = next_instruction()
                if ins.kind == pb.Instruction.STOP:
                    log.info(
                        "client %d: task finished after %d jobs", self.client_id, self.rounds_done
                    )
                    return
                data = fetch(ins, limit)
            except grpc.RpcError as e:
                raise self._unmendable(e) from None
            if data is None:  # the round closed before we started
                continue
            if ins.HasField("secagg"):  # its upload would go in the clear: never send it
                raise JobError(
                    f"client {self.client_id}: the aggregator runs secure aggregation "
                    "([runtime.secagg]); an own loop cannot take part in it: run "
                    "`fedloom client` (RuntimeClient) instead"
                )
            params, tensors = self.coding.model(int(ins.round), data, self.spec)
            params = params.clone()  # the job's own: no view of the transfer's buffer
            job = self._job(ins, params, {n: t.clone() for n, t in tensors.items()})
            with self._heartbeats():
                yield job
            if not job.uploaded:
                log.warning("client %d: %r ended without an upload", self.client_id, job)
            self.rounds_done += 1

    def _job(self, ins: Any, params: torch.Tensor, tensors: dict[str, torch.Tensor]) -> Job:
        assert self.spec is not None and self.seed is not None
        config = self.noise.take(json.loads(ins.config_json or "{}"), self.client_id)
        check_supported(config.get("algorithm"), self.client_id, self.manual_client_part)
        return Job(
            self.client_id,
            int(ins.round),
            int(ins.version),
            config,
            self.spec,
            params,
            tensors,
            derive_seed(self.seed, "client", int(ins.round), self.client_id),
            self._upload_job,
            self.personal_layers,
            self.num_samples,
            state=self.client_state,
            manual_client_part=self.manual_client_part,
        )

    def _upload_job(
        self,
        job: Job,
        flat: torch.Tensor,
        num_samples: int,
        metrics: dict[str, float],
        extras: dict[str, torch.Tensor],
    ) -> bool:
        assert self.spec is not None
        ins = pb.Instruction(round=job.round, version=job.version)
        # against the global the job decoded; the residual kept with the part's state
        parts = self.coding.encode(
            job.round, self.spec, job._params, flat, extras, self.client_state
        )
        try:
            send: Callable[..., Any] = self._send
            reply = send(ins, parts, num_samples, metrics)
        except grpc.RpcError as e:
            raise self._unmendable(e) from None
        if not reply.accepted:
            self.coding.refused(job.round, reply.reason)
            log.warning(
                "client %d: round %d update refused: %s", self.client_id, job.round, reply.reason
            )
            return False
        log.info(
            "client %d: round %d uploaded (loss %.4f, %.2f s)",
            self.client_id,
            job.round,
            metrics.get("loss", math.nan),
            metrics["seconds"],
        )
        return True

    # -- check-in ----------------------------------------------------------------------------
    def _announced_samples(self) -> int:
        return self.num_samples

    def _on_check_in(self, reply: Any, spec: ParamSpec) -> None:
        if self.spec is not None and spec != self.spec:
            raise FedloomError(
                f"client {self.client_id}: the aggregator's model spec changed ({self.spec} "
                f"-> {spec}) when it restarted; this connection cannot go on"
            )
        self.seed, self.spec = int(reply.seed), spec
        self.coding.checked_in(self.seed)


def connect(
    server: str,
    *,
    client_id: int,
    num_samples: int,
    token: str = "",
    task_id: str = "fedloom",
    tls: TLSConfig | None = None,
    retry_for: float = 60.0,
    backoff: tuple[float, float] = (0.05, 2.0),
    use_bulk: bool = True,
    personal_layers: tuple[str, ...] = (),
    model: nn.Module | None = None,
    manual_client_part: bool = False,
    compression: Compression | Mapping[str, Sequence[str]] | Any = None,
) -> Connection:
    """Check in with the aggregator at ``server`` as ``client_id`` and return the
    :class:`Connection` whose ``jobs()`` drive the user's own training loop (use it in a
    ``with`` block, or call ``close()``).

    ``num_samples`` is announced at check-in: the aggregator bounds the weight of every
    upload by it. ``token``, ``task_id``, ``tls``, ``retry_for`` and ``use_bulk`` are as for
    ``fedloom client`` (the config's ``runtime`` section). ``personal_layers`` are name
    prefixes of the user's model kept on this client (the aggregator's spec leaves them out).
    ``model``, when given, is checked against the aggregator's spec at once, so a wrong
    architecture fails here rather than at the first job. ``manual_client_part=True`` says
    the loop applies the strategy's client part itself (``job.algorithm``, ``job.tensors``):
    jobs are then neither refused for a part :meth:`Job.client_part` cannot run nor checked
    for one at upload. ``compression`` is the run's ``[compression]`` (the aggregator's):
    the table as a mapping (``{"up": ["topk:0.1", "q8"], "down": ["fp16"]}``), a loaded
    config's ``cfg.compression``, or a :class:`~fedloom.compression.link.Compression`; each
    job's model is then decoded with the down chain and each upload encoded with the up chain,
    its error-feedback residual kept in ``client_state``, as ``fedloom client`` does (without
    it, an aggregator that compresses stops the loop with one line naming the key). A refused
    check-in raises
    :class:`~fedloom.runtime.RefusedError`; an aggregator that does not answer for
    ``retry_for`` seconds, :class:`~fedloom.runtime.client.UnreachableError`.
    """
    conn = Connection(
        server,
        client_id,
        num_samples=num_samples,
        personal_layers=personal_layers,
        manual_client_part=manual_client_part,
        compression=chains(compression),
        token=token,
        task_id=task_id,
        tls=tls,
        retry_for=retry_for,
        backoff=backoff,
        use_bulk=use_bulk,
    )
    conn.open()
    if model is not None:
        assert conn.spec is not None
        try:
            model_tensors(model, conn.spec, conn.personal_layers)
        except JobError:
            conn.close()
            raise
    return conn


def chains(compression: Compression | Mapping[str, Sequence[str]] | Any) -> Compression | None:
    """The run's chains from what :func:`connect` was given (None: no compression): a
    :class:`Compression`, the ``[compression]`` table, or anything with ``up`` and ``down``
    (a loaded config's section). The seed is the run seed the aggregator sends at check-in."""
    if compression is None or isinstance(compression, Compression):
        return compression or None
    if isinstance(compression, Mapping):
        unknown = sorted(set(compression) - {"up", "down"})
        if unknown:
            raise ValueError(f"compression: unknown keys {unknown}; the table has up and down")
        up, down = compression.get("up") or (), compression.get("down") or ()
    else:
        up, down = getattr(compression, "up", ()) or (), getattr(compression, "down", ()) or ()
    for key, value in (("up", up), ("down", down)):
        if isinstance(value, str):
            raise ValueError(f"compression.{key} is a list of codecs, got the string {value!r}")
    try:
        made = Compression(list(up), list(down))
    except ValueError as e:
        raise ValueError(f"compression: {e}") from None
    return made or None
