"""DP-SGD on each client (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
per-sample gradients clipped to L2 norm C, their sum noised with std z*C, every step.

Like Opacus, it wraps the user's own model and optimizer instead of owning the loop: a
forward hook on the model recomputes the forward pass with ``torch.func`` (``vmap`` of
``functional_call`` over a per-sample copy of the trainable parameters, an ``expand``, not a
copy), so the user's own loss and ``backward()`` leave each sample's gradient in those
copies; an optimizer step pre-hook clips them per sample, sums, adds the noise, divides by
the batch size (for a mean loss; ``loss_reduction="sum"``: not divided) and writes
``p.grad`` before the user's optimizer steps. Assumptions, as Opacus's: the loss is a sum or
mean of per-sample terms of the model's outputs (a weight penalty inside the loss is not
seen: use the optimizer's ``weight_decay``), the model's positional tensor arguments and its
output have the batch first, and no layer mixes samples (BatchNorm is refused, naming it).
Every trainable parameter is trained this way (personal layers too: they shape later
updates).

Accounting: each step is accounted as the Gaussian mechanism on a Poisson sample at
q = batch / client samples, composed over the steps (dp-accounting's
``PoissonSampledDpEvent(q, GaussianDpEvent(z))``). The task's loader shuffles and cuts
fixed-size batches (sampling without replacement), which TF Privacy, Opacus without
``poisson_sampling`` and most papers account the same way; the strict guarantee needs
Poisson-sampled batches. The epsilon is per client, about one of its samples, and is sent as
``sample_epsilon``. The noise is seeded as local DP's: from (run seed, round, client) in the
simulation, from the client's own secret seed in a deployment. The sampling rate is the
client's own batches over its own sample count, counted as the steps are taken: the
aggregator does not tell it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from ..algorithms.client import LocalRun, register_client_algorithm
from .accountant import Method
from .clientdp import ClientDPPart, ClientDPStage


def refuse_batchnorm(model: nn.Module) -> None:
    """ValueError naming the first BatchNorm layer: its output mixes the batch's samples, so
    a per-sample gradient is undefined."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"privacy.mode = 'dpsgd' cannot train a model with BatchNorm: layer "
                f"{name or 'model'!r} ({type(module).__name__}) mixes the samples of a batch, so "
                "per-sample gradients are undefined; use GroupNorm or LayerNorm instead"
            )


class PerSampleStep:
    """One client's DP-SGD hooks on its model and optimizer, and the steps they took."""

    def __init__(self, part: DPSGDPart, run: LocalRun, num_samples: int):
        self.part, self.num_samples = part, num_samples
        self.trainable = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
        self.fixed: dict[str, torch.Tensor] = {
            **{n: p for n, p in run.model.named_parameters() if not p.requires_grad},
            **dict(run.model.named_buffers()),
        }
        self.generator = part.noise_generator(run)
        self.copies: list[dict[str, torch.Tensor]] = []  # per-sample parameters, per forward
        self.counts: dict[int, int] = {}  # batch size -> steps
        self._inside = False

    def attach(self, run: LocalRun) -> None:
        run.on_close(run.model.register_forward_hook(self.forward, with_kwargs=True))
        run.on_close(run.optimizer.register_step_pre_hook(self.step))

    def forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        """The same outputs, computed per sample so that backward fills the copies."""
        if self._inside or not torch.is_grad_enabled():
            return None
        if kwargs or not isinstance(output, torch.Tensor) or output.dim() == 0:
            raise ValueError(
                "dpsgd: the model must take its inputs as positional arguments and return one "
                "tensor with the batch first"
            )
        batch = output.shape[0]
        copies = {
            n: p.detach().expand(batch, *p.shape).requires_grad_(True)
            for n, p in self.trainable.items()
        }

        def one(params: dict[str, torch.Tensor], *sample: Any) -> torch.Tensor:
            single = tree_map(lambda t: t.unsqueeze(0) if torch.is_tensor(t) else t, sample)
            out: torch.Tensor = functional_call(module, (params, self.fixed), single)
            return out.squeeze(0)

        dims = tuple(0 if _has_tensor(a) else None for a in args)
        self._inside = True
        try:
            out = vmap(one, in_dims=(0, *dims), randomness="different")(copies, *args)
        finally:
            self._inside = False
        self.copies.append(copies)
        return out

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Clip each sample's gradient to C, sum, add N(0, (z C)^2), set ``p.grad``."""
        used = [c for c in self.copies if any(t.grad is not None for t in c.values())]
        self.copies = []
        if not used or len({next(iter(c.values())).shape[0] for c in used}) != 1:
            raise RuntimeError(
                "dpsgd: each optimizer step needs one backward pass through the model's "
                "forward on one batch since the last step"
            )
        batch = next(iter(used[0].values())).shape[0]
        mean = self.part.loss_reduction == "mean"
        # the copies hold (1/B) * each sample's gradient for a mean loss: scale it back
        scale = float(batch) if mean else 1.0
        grads = [_summed(n, used, p).view(batch, -1) for n, p in self.trainable.items()]
        if not grads:
            return
        squares = torch.zeros(batch, dtype=torch.float64, device=grads[0].device)
        for g in grads:
            squares.add_(g.double().square().sum(1))
        clip, z = self.part.clip_norm, self.part.noise_multiplier
        # weight of each copy in the sum: the sample's clip factor (its gradient's norm is
        # the copy's times the scale); a mean loss's copies already carry the 1/B
        weights = (clip / (squares.sqrt() * scale)).clamp_(max=1.0)
        totals = [weights.to(g.dtype) @ g for g in grads]
        if z > 0:
            dtype = totals[0].dtype
            numel = sum(t.numel() for t in totals)
            noise = torch.randn(numel, generator=self.generator, dtype=dtype).to(grads[0].device)
            sigma = z * clip / (batch if mean else 1)
            torch._foreach_add_(totals, list(noise.split([t.numel() for t in totals])), alpha=sigma)
        for p, total in zip(self.trainable.values(), totals):
            p.grad = total.view_as(p)
        self.counts[batch] = self.counts.get(batch, 0) + 1

    def spent(self) -> list[tuple[float, float, int]]:
        z = self.part.noise_multiplier
        return [(min(1.0, b / self.num_samples), z, n) for b, n in sorted(self.counts.items())]


def _has_tensor(arg: Any) -> bool:
    found: list[bool] = []
    tree_map(lambda t: found.append(torch.is_tensor(t)), arg)
    return any(found)


def _summed(name: str, used: list[dict[str, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """The per-sample gradients of parameter ``name`` over the step's forward passes."""
    grads = [g for c in used if (g := c[name].grad) is not None]
    if not grads:
        return torch.zeros(used[0][name].shape, dtype=like.dtype, device=like.device)
    total = grads[0]  # the copies are dropped after the step: summed in place
    for g in grads[1:]:
        total.add_(g)
    return total


@register_client_algorithm
class DPSGDPart(ClientDPPart):
    """The client part: DP-SGD steps through the user's own loop, a per-client accountant."""

    name = "dpsgd"
    metric: ClassVar[str] = "sample_epsilon"
    mode: ClassVar[str] = "dpsgd"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        accountant: Method = "rdp",
        loss_reduction: str = "mean",
        inner: dict[str, Any] | None = None,
        noise_seed: int | None = None,
    ):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.loss_reduction = loss_reduction
        super().__init__(noise_multiplier, clip_norm, delta, accountant, inner, noise_seed)
        self._runs: dict[int, PerSampleStep] = {}
        self._lock = threading.Lock()

    def begin(self, run: LocalRun) -> None:
        refuse_batchnorm(run.model)
        step = PerSampleStep(self, run, run.task.num_samples(run.ctx.client_id))
        step.attach(run)  # before the inner part's hooks: they correct the private gradient
        with self._lock:
            self._runs[id(run)] = step
        super().begin(run)

    def end(self, run: LocalRun) -> None:
        with self._lock:
            step = self._runs.pop(id(run))
        super().end(run)
        self.account(run, step.spent())


class DPSGD(ClientDPStage):
    """DP-SGD on every client, around any strategy whose client part sends only the model:
    ``Staged(FedAvg(), [DPSGD(noise_multiplier=1.1, clip_norm=1.0)])``.

    Args:
        noise_multiplier: z, the noise std on each step's gradient sum in units of C.
        clip_norm: C, the L2 bound of each sample's gradient.
        delta: the delta of each client's reported (epsilon, delta).
        accountant: ``"rdp"`` or ``"pld"``.
        loss_reduction: ``"mean"`` (the task's loss averages over the batch: the noised sum
            is divided by the batch size) or ``"sum"``.
        noise_seed: the noise from this seed instead of the run seed, as
            :class:`~fedloom.privacy.local.LocalDP`'s.

    Each round's record carries ``sample_epsilon_max``, the largest any client reported.
    """

    part: ClassVar[str] = "dpsgd"
    metric: ClassVar[str] = "sample_epsilon"
    mode: ClassVar[str] = "dpsgd"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        *,
        accountant: Method = "rdp",
        loss_reduction: str = "mean",
        noise_seed: int | None = None,
    ):
        super().__init__()
        checked = DPSGDPart(
            noise_multiplier, clip_norm, delta, accountant, loss_reduction, None, noise_seed
        )
        self.noise_multiplier, self.clip_norm = checked.noise_multiplier, checked.clip_norm
        self.delta, self.accountant = checked.delta, checked.accountant
        self.loss_reduction, self.noise_seed = checked.loss_reduction, checked.noise_seed

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "accountant": self.accountant,
            "loss_reduction": self.loss_reduction,
        }
        if self.noise_seed is not None:
            options["noise_seed"] = self.noise_seed
        return options
