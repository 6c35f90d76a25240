"""Vectorised in-process simulation: the clients of a round trained together with ``torch.func``.

Why: with small models and small clients (logistic regression, the 2NN MLP, 4-40 samples per
client) the sequential engine spends most of its time on per-client and per-step Python work
(loading the model, building the optimizer, a dozen tiny kernels per step), not on arithmetic.
Stacking the cohort's parameters into one ``(clients, numel)`` tensor and taking every client's
step with one ``vmap``-ed ``grad`` call turns ``clients x steps`` small steps into ``steps``
batched ones.

What is kept exactly as the sequential :class:`~fedloom.simulation.InProcessClients` does it,
so the two engines give the same model to float tolerance:

* each client's batches: the permutation ``torch.randperm(n, generator=g)`` with
  ``g = Generator().manual_seed(derive_seed(seed, "client", round, cid))``, one draw per epoch
  from the same generator, then slicing into batches of ``batch_size`` (the last one partial);
* the loss of a batch is the mean cross-entropy over its *real* samples: a padded slot of a
  partial batch has weight 0, the others ``1 / len(batch)``;
* plain SGD: ``g += weight_decay * p; p -= lr * g``, only for parameters the optimizer holds
  and that receive a gradient;
* a client stops updating after its own ``epochs * ceil(n / batch_size)`` steps. Rows are
  ordered by step count, longest first, so the clients still training at step ``t`` are a
  prefix of the rows: the step is computed on that prefix only. That is the 0/1 step mask
  ``m[client, t]`` applied by slicing instead of multiplying, so finished clients are left
  untouched bit for bit and cost nothing (with skewed client sizes most rows finish early).

Where the time goes (one CPU thread): gradients are taken per tensor (the gradient of a flat
row would zero-fill a full row per tensor), and the first step, where every client still holds
the global model, passes the parameters unbatched so that each layer is one matmul over the
whole cohort. Past that, each client's weights differ and every step streams ``clients x
model`` bytes through memory several times (forward, weight gradient, update). For logistic
regression and clients of a few samples this is a 3-6x win over the sequential loops, as the
per-client Python work goes; for the 784-200-200-10 MLP at batch 10 the batched matmuls are
memory-bound, as the sequential ones already are.

Models that are a chain of ``Linear`` layers and activations (the MLP, logistic regression)
therefore take the hand-derived step of :mod:`~fedloom.simulation.fused` instead (``fuse``,
on by default; ``path`` says which step runs): no gradient buffers, weights updated in place,
each step's update kept as a low-rank factor while the forward runs on the shared global
weights, and chunks sized to stay in cache. In float64 it agrees with the sequential engine to
1e-16; in float32 its sums are ordered differently, so a ReLU whose input is within rounding
of zero can go the other way, and from then on the models differ by more than rounding:
4e-4 at most after 12 rounds of the MNIST MLP, where the sequential engine on one and on two
BLAS threads differs by 4e-6 (one such flip). ``fuse=False`` keeps to the ``vmap`` step.

Set-up: the fused step is checked on its own against autograd's SGD (``torch.fx`` tracing and
two trial steps, ~10 ms for the MLP); the ``vmap`` step is built and checked only for models
the fused step does not take, because the first ``torch.func`` gradient of a process imports
``torch._dynamo`` (~0.9 s on 2 cores; built always, it made a whole 10-round MNIST MLP run
1.36x as long as with the sequential engine).

On a GPU, chunks are sized from the device's free memory (a quarter of it by default), not
from a CPU cache: there every client of a round should be one batch. Mixed precision
(``task.mixed_precision``, ``train.precision``): bf16 runs the ``vmap`` step under autocast
(the fused step's hand-written kernels are float32 only); fp16 needs a gradient scaler that
skips steps per client, so it trains sequentially. Per step nothing is read back from the device:
losses are summed there and read once per chunk, and the batch layout is built on the CPU
(the permutations are the sequential engine's CPU draws) and sent over once per chunk.

Anything this cannot reproduce exactly falls back to the sequential engine, with a warning
saying why: a task that is not a plain :class:`~fedloom.ClassificationTask`, an optimizer that
is not momentum-free SGD, personal layers or kept optimizer state, BatchNorm or any buffer that
changes in train mode, dropout or any other randomness in the forward pass, a model whose
outputs for one sample depend on the rest of its batch (padding would change them), or a trial
``vmap`` call that raises or disagrees with autograd (data-dependent control flow and the like).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import optim
from ..accel.precision import MixedPrecision
from ..algorithms.base import RoundPlan
from ..backend import BackendBase
from ..classification import ClassificationTask
from ..params import ParamSpec, flatten_module
from ..seeding import derive_seed, seed_torch
from ..task import Task
from ..update import ClientUpdate
from .engine import InProcessClients
from .fused import LinearChain

log = logging.getLogger("fedloom")

#: hooks whose ClassificationTask behaviour the vectorised step re-implements; a subclass
#: overriding one (e.g. a proximal term in ``train_step``) must run sequentially.
_REIMPLEMENTED_HOOKS = ("train_step", "train_an_epoch", "train_loader")

#: the vmap-ed gradient must agree with autograd on a trial batch to this tolerance.
_TRIAL_RTOL, _TRIAL_ATOL = 1e-3, 1e-5

#: on a CPU, a chunk of the fused step holds at most this many bytes of client parameters:
#: each step then rereads them from the last-level cache rather than from memory (measured on
#: the 2NN, 0.8 MB a client, 32 MiB L3: chunks of 4-10 clients ~17 ms, of 20 clients 23 ms)
_CACHE_BYTES = 8 * 2**20

#: the chunk budget when ``memory_mb`` is not given: on a CPU 512 MiB; on a GPU this share of
#: the device's free memory when the engine is built
_CPU_BUDGET_MB = 512.0
_GPU_FREE_SHARE = 0.25

Tensors = tuple[torch.Tensor, ...]
StepFn = Callable[
    [Tensors, Tensors, torch.Tensor, torch.Tensor, torch.Tensor], tuple[Tensors, torch.Tensor]
]


class VectorizedClients(BackendBase):
    """A simulation backend that trains all clients of a round at once with ``torch.func``.

    Use it where :class:`~fedloom.simulation.InProcessClients` would go::

        Federation(task, strategy, backend=VectorizedClients(task, seed), rounds=..., seed=seed)

    with the same ``seed`` as the federation, so each client shuffles as it would sequentially.
    When the task cannot be vectorised faithfully, every call is delegated to an internal
    :class:`InProcessClients`; ``vectorized`` tells which, ``fallback_reason`` why.

    Memory is ``O(chunk x numel)``: the planned clients are trained in chunks of at most
    ``max_cohort`` rows (by default as many as fit ``memory_mb`` for parameters, gradients and
    a temporary), and each chunk's updates are yielded before the next chunk is trained. An
    update's ``params`` is a view of its client's row, valid until the next chunk starts (the
    :class:`~fedloom.ClientUpdate` contract: valid until the next update is drawn, at least).

    Args:
        task: the user's task; vectorised only for a :class:`~fedloom.ClassificationTask`.
        seed: the run seed (must equal the federation's for identical results).
        max_cohort: most clients trained at once; ``None`` to derive it from ``memory_mb``
            (and, for the fused step on a CPU, from what stays in cache).
        memory_mb: budget for one chunk's stacked parameters, gradients and update temporary;
            ``None``: 512 MiB on a CPU, a quarter of the free memory on a GPU.
        fuse: use the hand-derived step of :mod:`~fedloom.simulation.fused` for chains of
            Linear layers and activations (the MLP, logistic regression) instead of ``vmap``;
            ``path`` tells which step runs.
    """

    def __init__(
        self,
        task: Task,
        seed: int = 0,
        *,
        max_cohort: int | None = None,
        memory_mb: float | None = None,
        fuse: bool = True,
    ):
        if max_cohort is not None and max_cohort < 1:
            raise ValueError(f"max_cohort must be >= 1, got {max_cohort}")
        if memory_mb is not None and memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
        self.task = task
        self.seed = seed
        self.max_cohort = max_cohort
        self.memory_mb = memory_mb
        self.fuse = fuse
        self._chain: LinearChain | None = None
        self._work: list[torch.Tensor] = []  # the fused step's per-tensor buffers
        self.fallback_reason: str | None = None
        self._fallback: InProcessClients | None = None
        self._states: dict[str, Any] = {}
        self._plan = RoundPlan([])
        self._round = 0
        self._global: torch.Tensor | None = None
        reason = self._setup()
        if reason is not None:
            self._fall_back(reason)

    # -- the Backend protocol ----------------------------------------------------------------
    @property
    def vectorized(self) -> bool:
        """True while rounds are trained vectorised (False once fallen back to sequential)."""
        return self._fallback is None

    @property
    def path(self) -> str:
        """Which step trains the rounds: ``"fused"``, ``"vmap"`` or ``"sequential"``."""
        if self._fallback is not None:
            return "sequential"
        return "fused" if self._chain is not None else "vmap"

    def available_clients(self, round: int) -> list[int]:
        if self._fallback is not None:
            return self._fallback.available_clients(round)
        return list(range(self.task.num_clients))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        """Remember the round's plan and snapshot the global model (once, not per client)."""
        self._plan, self._round = plan, round
        if self._fallback is None:
            if plan.tensors or plan.client_algorithm:
                self._fall_back("the strategy has a client-side part (hooks on every step)")
            elif plan.client_epochs:
                self._fall_back("stragglers run their own number of epochs")
        if self._fallback is not None:
            self._fallback.distribute(round, plan, global_params)
            return
        if self._global is None or self._global.shape != global_params.shape:
            self._global = torch.empty_like(global_params)
        self._global.copy_(global_params)

    def collect(self) -> Iterator[ClientUpdate]:
        """Train the planned clients chunk by chunk; yield their updates in plan order."""
        if self._fallback is not None:
            yield from self._fallback.collect()
            return
        clients = list(self._plan.clients)
        epochs = self._plan.round_epochs(self.task.local_epochs)
        chunk = self._chunk_size()
        for start in range(0, len(clients), chunk):
            cids = clients[start : start + chunk]
            try:
                updates = self._train_chunk(self._round, cids, epochs)
            except Exception as e:
                if start:  # updates already yielded: a restart would train them twice
                    raise
                self._fall_back(f"the vectorised step failed in round {self._round}: {_why(e)}")
                assert self._fallback is not None and self._global is not None
                self._fallback.distribute(self._round, self._plan, self._global)
                yield from self._fallback.collect()
                return
            yield from updates

    def state_dict(self) -> dict[str, Any]:
        if self._fallback is not None:
            return self._fallback.state_dict()
        return {"clients": dict(self._states)}  # vectorised clients keep no state of their own

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._fallback is not None:
            self._fallback.load_state_dict(state)
            return
        self._states = dict(state.get("clients", {}))

    # -- eligibility -------------------------------------------------------------------------
    def _setup(self) -> str | None:
        """Build the model and the batched step; return why it cannot be vectorised, if so."""
        task = self.task
        if not isinstance(task, ClassificationTask):
            return f"{type(task).__name__} is not a ClassificationTask"
        for hook in _REIMPLEMENTED_HOOKS:
            if getattr(type(task), hook) is not getattr(ClassificationTask, hook):
                return f"{type(task).__name__} overrides {hook}()"
        if task.personal_layers:
            return "the task has personal layers (kept per client)"
        if task.keep_optimizer_state:
            return "the task keeps optimizer state between rounds"
        self._amp = MixedPrecision(task.mixed_precision, task.device)
        if task.mixed_precision == "fp16":
            return "precision fp16: its gradient scaler skips overflowing steps client by client"
        if self.memory_mb is None:
            self.memory_mb = _default_budget_mb(task.device)
        # per client, looked up once: len() of a tensor costs ~2 us a call, 10k clients a round
        self._sizes = [len(p) for p in task.parts]
        self._num_samples = [task.num_samples(c) for c in range(task.num_clients)]
        with _forked_rng(task.device):
            seed_torch(derive_seed(self.seed, "init"))
            self.model: nn.Module = task.build_model()
        self.spec: ParamSpec
        self.spec, self.flat = flatten_module(self.model)
        self._initial = self.flat.detach().clone()
        for name, module in self.model.named_modules():
            kind = type(module).__name__
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
            ):
                return f"the model has {kind} ({name or 'root'}): batch statistics"
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                return f"the model has {kind} ({name or 'root'}): random in train mode"
        reason = _hooks(self.model)
        if reason is None:
            reason = self._check_optimizer()
        if reason is None:
            with _forked_rng(task.device):
                reason = self._trial()
        self.flat.copy_(self._initial)
        return reason

    def _check_optimizer(self) -> str | None:
        """Accept momentum-free SGD; record each parameter's learning rate and weight decay."""
        try:
            opt = self.task.build_optimizer(self.model)
        except Exception as e:  # noqa: BLE001 - a hook that fails on our model
            return f"build_optimizer raised {_why(e)}"
        if type(opt) not in (torch.optim.SGD, optim.SGD):  # SGD's own step, nothing added
            return f"the optimizer is {type(opt).__name__}, not plain SGD"
        from torch.optim import optimizer as torch_optimizer

        global_hooks = torch_optimizer._global_optimizer_pre_hooks or (
            torch_optimizer._global_optimizer_post_hooks
        )
        if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or global_hooks:
            return "the optimizer has step hooks"
        where = {id(p): n for n, p in self.model.named_parameters()}
        fed = set(self.spec.names)
        self._hyper: dict[str, tuple[float, float]] = {}  # name -> (lr, weight decay)
        for group in opt.param_groups:
            if group.get("momentum", 0) != 0:
                return f"SGD with momentum {group['momentum']} (only momentum 0 is vectorised)"
            if group.get("maximize", False):
                return "SGD with maximize=True"
            for p in group["params"]:
                name = where.get(id(p))
                if name is None or name not in fed:
                    return "the optimizer holds a tensor that is not a federated parameter"
                self._hyper[name] = (float(group["lr"]), float(group["weight_decay"]))
        return None

    def _trial(self) -> str | None:
        """Run the model on a real batch: buffers, randomness, batch coupling, vmap vs autograd."""
        task = self.task
        assert isinstance(task, ClassificationTask)
        model, b = self.model, task.batch_size
        ids = task.parts[0][:b].to(task.device)
        x, y = _rows(task._x, ids), _rows(task._y, ids)
        model.train()
        buffers = {n: t.detach().clone() for n, t in model.named_buffers()}
        try:
            with torch.no_grad():
                seed_torch(1)
                out = model(x)
                changed = [n for n, t in model.named_buffers() if not torch.equal(t, buffers[n])]
                seed_torch(2)
                again = model(x)
                single = model(x[:1])
        except Exception as e:  # noqa: BLE001 - let the sequential engine report it per client
            return f"a trial forward pass raised {_why(e)}"
        finally:
            with torch.no_grad():
                for n, t in model.named_buffers():
                    t.copy_(buffers[n])
        if changed:
            return f"buffers {changed} change in train mode"
        if not torch.equal(out, again):
            return "the forward pass is random in train mode (dropout or similar)"
        if not torch.allclose(single, out[:1], rtol=_TRIAL_RTOL, atol=_TRIAL_ATOL):
            return "a sample's output depends on the rest of its batch"

        # autograd's gradient of the mean loss; SGD skips parameters that get none, and so do we
        # in float32 even under autocast: the trial checks what the step computes (the
        # model's structure), not bf16's rounding, which differs from op order to op order
        expected = self._autograd_grads(x, y)
        self._trained = [
            i
            for i, e in enumerate(self.spec.entries)
            if e.name in expected and self._hyper.get(e.name, (0.0, 0.0))[0] != 0.0
        ]
        trained = set(self._trained)
        self._fixed = [i for i in range(len(self.spec.entries)) if i not in trained]
        if self.fuse and self._amp.enabled:
            log.info("VectorizedClients: vmap step (%s autocast)", task.mixed_precision)
        elif self.fuse:  # checked against autograd's SGD itself: the vmap step is never built
            self._chain = self._fused_chain(x, y)
            if self._chain is not None:
                return None
        return self._vmap_trial(x, y, expected)

    def _autograd_grads(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Autograd's gradient of the mean loss on ``x, y``, per parameter that gets one
        (SGD skips the others, and so do we)."""
        model = self.model
        model.zero_grad(set_to_none=True)
        torch.autograd.backward(F.cross_entropy(model(x), y))
        grads = {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        }
        model.zero_grad(set_to_none=True)
        return grads

    def _vmap_trial(
        self, x: torch.Tensor, y: torch.Tensor, expected: dict[str, torch.Tensor]
    ) -> str | None:
        """Build the ``vmap``-ed steps; why not, if a trial call raises or disagrees with
        autograd's gradients ``expected`` on the batch ``x, y``.

        Only for models the fused step does not take: the first ``grad`` transform of a
        process imports ``torch._dynamo`` (~0.9 s on 2 cores: torch.func enters its
        ``compiled_autograd`` context around every ``autograd.grad`` call it makes).
        """
        from torch.func import grad_and_value, vmap

        # per-client parameters; fixed tensors (buffers, frozen) are the same for every client
        self._step: StepFn = vmap(grad_and_value(self._loss), in_dims=(0, None, 0, 0, 0))
        # the first step, where every client still holds the global model: shared parameters
        # make each layer one large matmul over the whole cohort instead of a batched one
        self._first_step: StepFn = vmap(grad_and_value(self._loss), in_dims=(None, None, 0, 0, 0))

        glob = self._unflatten(self.flat.detach())
        rows = self.flat.detach().unsqueeze(0).repeat(2, 1)
        views = self._views(rows)
        fixed = tuple(glob[i] for i in self._fixed)
        batch = (torch.stack([x, x]), torch.stack([y, y]))
        w = torch.full((2, len(y)), 1.0 / len(y), dtype=self.flat.dtype, device=x.device)
        try:
            first, _ = self._first_step(tuple(glob[i] for i in self._trained), fixed, *batch, w)
            later, _ = self._step(tuple(views[i] for i in self._trained), fixed, *batch, w)
            if self._amp.enabled:  # and once under autocast: it must run there too
                with self._amp.autocast():
                    self._step(tuple(views[i] for i in self._trained), fixed, *batch, w)
        except Exception as e:  # noqa: BLE001 - vmap's refusals are many and varied
            return f"a trial torch.func.vmap call raised {_why(e)}"
        for i, g0, g1 in zip(self._trained, first, later):
            name = self.spec.entries[i].name
            want = expected[name]
            for g in (g0[1], g1[1]):
                if not torch.allclose(g, want, rtol=_TRIAL_RTOL, atol=_TRIAL_ATOL):
                    err = float((g - want).abs().max())
                    return f"the vmap-ed gradient of {name} differs from autograd's ({err:.3g})"
        return None

    def _fused_chain(self, x: torch.Tensor, y: torch.Tensor) -> LinearChain | None:
        """The fused step, if the model is a chain it handles and two trial steps agree with
        autograd's SGD (the first from the shared global model, the second per client)."""
        entries = self.spec.entries
        hyper = {i: self._hyper[entries[i].name] for i in self._trained}
        chain, why = LinearChain.of(self.model, [e.name for e in entries], hyper, x.dim() - 1)
        if chain is None:
            log.info("VectorizedClients: vmap step (%s)", why)
            return None
        # two steps on the same batch, from the global model, against autograd's SGD
        glob = [t.clone() for t in self._unflatten(self.flat.detach())]
        want = [t.clone() for t in glob]
        params = dict(self.model.named_parameters())
        for _ in range(2):
            self.model.zero_grad(set_to_none=True)
            torch.autograd.backward(F.cross_entropy(self.model(x), y))
            with torch.no_grad():
                for i, (e, t) in enumerate(zip(entries, self._unflatten(self.flat))):
                    if i in hyper:
                        lr, wd = hyper[i]
                        grad = params[e.name].grad
                        assert grad is not None, e.name
                        t.sub_(lr * (grad + wd * t))
                        want[i] = t.clone()
        self.model.zero_grad(set_to_none=True)
        work = [torch.empty((2, *e.shape), dtype=self.spec.dtype, device=x.device) for e in entries]
        w = torch.full((2, len(y)), 1.0 / len(y), dtype=self.flat.dtype, device=x.device)
        batch = torch.stack([x, x]), torch.stack([y, y]), w
        try:
            with torch.no_grad():
                chain.train(work, glob, [2, 2], lambda t, a: batch, 2)
        except Exception as e:  # noqa: BLE001 - then the vmap step it is
            log.info("VectorizedClients: vmap step (the fused step raised %s)", _why(e))
            return None
        for i in chain.owned:
            if not torch.allclose(work[i], want[i], rtol=_TRIAL_RTOL, atol=_TRIAL_ATOL):
                err = float((work[i] - want[i]).abs().max())
                name = entries[i].name
                log.info("VectorizedClients: vmap step (fused %s off by %.3g)", name, err)
                return None
        return chain

    def _fall_back(self, reason: str) -> None:
        """From now on delegate everything to the sequential engine (and say so once)."""
        self.fallback_reason = reason
        log.warning("VectorizedClients: using sequential InProcessClients instead: %s", reason)
        task = self.task
        device = task.device if isinstance(task, ClassificationTask) else torch.device("cpu")
        with _forked_rng(device):  # its model init must not move the caller's RNG
            self._fallback = InProcessClients(self.task, self.seed)
        if self._states:
            self._fallback.load_state_dict({"clients": self._states})

    # -- the batched step --------------------------------------------------------------------
    def _loss(
        self,
        trained: tuple[torch.Tensor, ...],
        fixed: tuple[torch.Tensor, ...],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
    ) -> torch.Tensor:
        """One client's batch loss: per-sample cross-entropy weighted ``1/len`` or 0 (padding).

        The gradient is taken per tensor, not of one flat row: the backward of slicing a flat
        row would zero-fill a full-size gradient per tensor and add them up (measured: 3/4 of
        an MLP round).
        """
        entries = self.spec.entries
        params = {entries[i].name: t for i, t in zip(self._trained, trained)}
        params.update({entries[i].name: t for i, t in zip(self._fixed, fixed)})
        out = functional_call(self.model, params, (x,))
        return (F.cross_entropy(out, y, reduction="none") * w).sum()

    def _views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per tensor of the spec, its ``(clients, *shape)`` view into the stacked rows."""
        k = rows.shape[0]
        return [rows[:, self.spec.slice(e.name)].view(k, *e.shape) for e in self.spec.entries]

    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per tensor of the spec, its view into one flat buffer."""
        return [flat[self.spec.slice(e.name)].view(e.shape) for e in self.spec.entries]

    def _chunk_size(self) -> int:
        """Clients per chunk: ``max_cohort``, or what ``memory_mb`` holds (rows, grads, temp)."""
        if self.max_cohort is not None:
            return self.max_cohort
        budget = self.memory_mb if self.memory_mb is not None else _CPU_BUDGET_MB
        cached = self._chain is not None and self.flat.device.type == "cpu"
        return chunk_size(self.spec.nbytes, budget, cached)

    def _layout_round(
        self, rnd: int, cids: list[int], order: list[int], epochs: int, t_max: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ids and slot weights, ``(row, step, slot)``, as each client sees them alone.

        Per client only what must be: its seed and one ``randperm`` per epoch from its own
        generator (re-seeded, which resets it exactly as a fresh one). Placing the ids into
        batches is done for the whole chunk at once: sample ``j`` of epoch ``e`` goes to step
        ``e * ceil(n / B) + j // B``, slot ``j % B``, with weight ``1 / len(its batch)``.
        Slots left empty keep sample 0 (finite) and weight 0, so they add nothing.
        """
        task = self.task
        assert isinstance(task, ClassificationTask)
        b, k = task.batch_size, len(order)
        g = torch.Generator()
        perms: list[torch.Tensor] = []
        parts: list[torch.Tensor] = []
        for i in order:
            cid = cids[i]
            part = task.parts[cid]
            g.manual_seed(derive_seed(self.seed, "client", rnd, cid))
            perms.extend(torch.randperm(self._sizes[cid], generator=g) for _ in range(epochs))
            parts.append(part)
        n = torch.tensor([self._sizes[cids[i]] for i in order])
        part_start = torch.cumsum(n, 0) - n
        reps = n * epochs  # entries per row: every epoch's permutation
        row = torch.repeat_interleave(torch.arange(k), reps)
        j = torch.arange(int(reps.sum())) - torch.repeat_interleave(
            torch.cumsum(reps, 0) - reps, reps
        )
        n_e, local = n[row], torch.cat(perms)
        epoch, pos = j // n_e, j % n_e
        slots = (n_e + b - 1) // b * b  # slots per epoch
        flat_pos = row * (t_max * b) + epoch * slots + pos
        batch_len = torch.clamp(n_e - pos // b * b, max=b)
        idx = torch.zeros(k * t_max * b, dtype=torch.int64)
        w = torch.zeros(k * t_max * b, dtype=self.spec.dtype)
        idx[flat_pos] = torch.cat(parts)[part_start[row] + local]
        w[flat_pos] = 1.0 / batch_len.to(self.spec.dtype)
        return idx.view(k, t_max, b), w.view(k, t_max, b)

    def _train_chunk(self, rnd: int, cids: list[int], epochs: int) -> list[ClientUpdate]:
        """Train ``cids`` together from the global model; their updates in the given order."""
        task = self.task
        assert isinstance(task, ClassificationTask) and self._global is not None
        t0 = time.perf_counter()
        b = task.batch_size
        steps = [epochs * math.ceil(self._sizes[c] / b) for c in cids]
        order = sorted(range(len(cids)), key=lambda i: -steps[i])  # longest first, stable
        k, t_max = len(cids), steps[order[0]]
        if t_max == 0:  # no local epochs this round: every client returns the global model
            rows = self._global.unsqueeze(0).repeat(k, 1)
            return [
                ClientUpdate(
                    c, rows[i], self._num_samples[c], {"loss": 0.0, "steps": 0, "epochs": 0}, rnd
                )
                for i, c in enumerate(cids)
            ]
        idx, w = self._layout_round(rnd, cids, order, epochs, t_max)
        idx, w = _to_device(idx, task.device), _to_device(w, task.device)
        sorted_steps = torch.tensor([steps[i] for i in order])
        active = torch.searchsorted(-sorted_steps, -torch.arange(t_max), right=False).tolist()

        glob = self._unflatten(self._global)
        train = self._fused_rows if self._chain is not None else self._vmap_rows
        rows, loss_sum = train(k, idx, w, active, glob)
        return self._updates(rnd, cids, epochs, steps, order, rows, loss_sum, t0)

    def _vmap_rows(
        self,
        k: int,
        idx: torch.Tensor,
        w: torch.Tensor,
        active: list[int],
        glob: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's ``k`` clients trained with the ``vmap``-ed gradient: their rows and
        summed losses (``idx``, ``w``: the layout; ``active``: clients training per step)."""
        task = self.task
        assert isinstance(task, ClassificationTask) and self._global is not None
        fixed = tuple(glob[i] for i in self._fixed)
        hyper = [self._hyper[self.spec.entries[i].name] for i in self._trained]
        rows = torch.empty((k, self.spec.numel), dtype=self.spec.dtype, device=self._global.device)
        views = self._views(rows)
        for i in self._fixed:
            views[i].copy_(glob[i])  # never updated: the global values, for the update rows
        trained = [views[i] for i in self._trained]
        loss_sum = torch.zeros(k, dtype=self.spec.dtype, device=rows.device)
        with torch.no_grad(), self._amp.autocast():
            for t, a in enumerate(active):
                # the clients still training are a prefix of the rows, as rows are sorted
                ids = idx[:a, t]
                x, y = _rows(task._x, ids), _rows(task._y, ids)
                if t == 0:  # every client at the global model: start from it, no copy needed
                    start = tuple(glob[i] for i in self._trained)
                    grads, losses = self._first_step(start, fixed, x, y, w[:a, t])
                    for v, g, p, (lr, wd) in zip(trained, grads, start, hyper):
                        if wd:  # SGD: g += wd * p; p -= lr * g
                            g.add_(p, alpha=wd)
                        torch.add(p, g, alpha=-lr, out=v[:a])
                else:
                    ps = tuple(v[:a] for v in trained)
                    grads, losses = self._step(ps, fixed, x, y, w[:a, t])
                    for p, g, (lr, wd) in zip(ps, grads, hyper):
                        if wd:
                            g.add_(p, alpha=wd)
                        p.add_(g, alpha=-lr)
                loss_sum[:a] += losses
        return rows, loss_sum

    def _fused_rows(
        self,
        k: int,
        idx: torch.Tensor,
        w: torch.Tensor,
        active: list[int],
        glob: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with :class:`~fedloom.simulation.fused.LinearChain` (in place)."""
        task, chain = self.task, self._chain
        assert isinstance(task, ClassificationTask) and chain is not None
        assert self._global is not None
        dev = self._global.device
        # a contiguous (k, *shape) buffer per tensor, kept between chunks: an in-place batched
        # matmul into the strided views of the (k, numel) rows copies them first (measured 6x)
        if not self._work or self._work[0].shape[0] < k:
            self._work = [
                torch.empty((k, *e.shape), dtype=self.spec.dtype, device=dev)
                for e in self.spec.entries
            ]
        work = [b[:k] for b in self._work]

        def batch(t: int, a: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            ids = idx[:a, t]  # the clients still training: a prefix of the sorted rows
            return _rows(task._x, ids), _rows(task._y, ids), w[:a, t]

        with torch.no_grad():
            loss_sum = chain.train(work, glob, active, batch, k)
        rows = torch.empty((k, self.spec.numel), dtype=self.spec.dtype, device=dev)
        owned = chain.owned
        for e, (v, b) in enumerate(zip(self._views(rows), work)):
            v.copy_(b if e in owned else glob[e].expand_as(v))
        return rows, loss_sum

    def _updates(
        self,
        rnd: int,
        cids: list[int],
        epochs: int,
        steps: list[int],
        order: list[int],
        rows: torch.Tensor,
        loss_sum: torch.Tensor,
        t0: float,
    ) -> list[ClientUpdate]:
        """One update per client, in the given order, from the rows sorted by step count."""
        seconds = (time.perf_counter() - t0) / len(cids)
        row_of = {i: row for row, i in enumerate(order)}
        losses_list = loss_sum.tolist()
        updates = []
        for i, cid in enumerate(cids):
            row = row_of[i]
            updates.append(
                ClientUpdate(
                    cid,
                    rows[row],
                    self._num_samples[cid],
                    {
                        "loss": losses_list[row] / max(steps[i], 1),
                        "steps": steps[i],
                        "epochs": epochs,
                        "seconds": seconds,  # the chunk's time shared out: no per-client clock
                    },
                    rnd,
                )
            )
        return updates


def chunk_size(row_bytes: int, budget_mb: float, in_cache: bool) -> int:
    """Clients per chunk for a model of ``row_bytes``: what ``budget_mb`` holds of each
    client's parameters, gradients and update temporary; for the fused step on a CPU
    (``in_cache``) no more than :data:`_CACHE_BYTES` of parameters, which each step rereads."""
    row = max(1, row_bytes)
    chunk = max(1, int(budget_mb * 2**20) // (3 * row))
    if in_cache:
        chunk = min(chunk, max(1, _CACHE_BYTES // row))
    return chunk


def _default_budget_mb(device: torch.device) -> float:
    """The chunk budget on ``device``: a share of a GPU's free memory, else the CPU's."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * _GPU_FREE_SHARE / 2**20
    return _CPU_BUDGET_MB


def _hooks(model: nn.Module) -> str | None:
    """Why hooks on gradients make the batched steps unfaithful, if the model has any."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks:
        return "a global module backward hook is registered"
    for name, m in model.named_modules():
        if m._backward_hooks or m._backward_pre_hooks:
            return f"module {name or 'root'} has backward hooks"
    for name, p in model.named_parameters():
        if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
            return f"parameter {name} has gradient hooks"
    return None


def _rows(data: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``data[ids]`` for a 2-d ``ids``: ``index_select`` is ~4x faster than indexing here."""
    return data.index_select(0, ids.reshape(-1)).view(*ids.shape, *data.shape[1:])


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from pinned memory, so the host does not wait for the
    kernels already queued (a plain copy from pageable memory would)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _forked_rng(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Leave the caller's torch RNG state as it was (CPU, plus the task's CUDA device)."""
    dev = torch.device(device)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)
