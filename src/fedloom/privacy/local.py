"""Local DP: each client clips and noises its own update before it leaves (as Flower's
local-DP mod), so the aggregator need not be trusted with any single update.

At the end of local training the client's delta (trained - global, over every federated
tensor, float buffers included) is clipped to L2 norm C and Gaussian noise of std z*C is
added to it. Each participation is one Gaussian mechanism on the client's whole data with
sensitivity C: the guarantee is per client, against anyone who sees the update, and the
server's sampling of clients gives *no* amplification (the client knows it was picked), so
the accountant composes (q = 1, z) once per round the client takes part in. The epsilon
spent so far is kept in the client's state and sent as ``local_epsilon`` in the metrics.

Only the model update is covered: the engine's other metrics (training loss, step count)
and the sample count travel in the clear. In the simulation the noise comes from (run seed,
round, client), which makes runs reproducible; a deployed client (``fedloom client``) draws
it from a secret seed of its own instead (:mod:`fedloom.privacy.clientnoise`), which the
aggregator, who chose the run seed, never learns.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..algorithms.client import LocalRun, register_client_algorithm
from .accountant import Method
from .clientdp import ClientDPPart, ClientDPStage
from .clipping import clip_


@register_client_algorithm
class LocalDPPart(ClientDPPart):
    """The client part: clip the update's delta to ``clip_norm``, add N(0, (z C)^2)."""

    name = "local_dp"
    metric: ClassVar[str] = "local_epsilon"
    mode: ClassVar[str] = "local"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        accountant: Method = "rdp",
        inner: dict[str, Any] | None = None,
        noise_seed: int | None = None,
    ):
        super().__init__(noise_multiplier, clip_norm, delta, accountant, inner, noise_seed)

    def end(self, run: LocalRun) -> None:
        super().end(run)
        with torch.no_grad():
            delta = run.flat.sub_(run.global_flat)
            clip_(delta, self.clip_norm)
            if self.noise_multiplier > 0:
                noise = torch.randn(
                    delta.shape, generator=self.noise_generator(run), dtype=delta.dtype
                )
                delta.add_(noise.to(delta.device), alpha=self.noise_multiplier * self.clip_norm)
            delta.add_(run.global_flat)
        self.account(run, [(1.0, self.noise_multiplier, 1)])


class LocalDP(ClientDPStage):
    """Local DP on every client, around any strategy whose client part sends only the model:
    ``Staged(FedProx(mu=0.01), [LocalDP(noise_multiplier=1.0, clip_norm=0.5)])``.

    Args:
        noise_multiplier: z, the noise std in units of C (0: clip only, no guarantee).
        clip_norm: C, the L2 bound of each client's delta.
        delta: the delta of each client's reported (epsilon, delta).
        accountant: ``"rdp"`` or ``"pld"`` (see :class:`~fedloom.privacy.Accountant`).
        noise_seed: the clients' noise from this seed instead of the run seed: the
            simulation of deployed clients started with ``--noise-seed`` (same numbers). A
            deployed client refuses work that carries one (the aggregator's seed).

    Each round's record carries ``local_epsilon_max``, the largest epsilon any client of the
    round has spent (the clients' own figures, from their metrics).
    """

    part: ClassVar[str] = "local_dp"
    metric: ClassVar[str] = "local_epsilon"
    mode: ClassVar[str] = "local"

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float = 1.0,
        delta: float = 1e-5,
        *,
        accountant: Method = "rdp",
        noise_seed: int | None = None,
    ):
        super().__init__()
        # ValueError early
        checked = LocalDPPart(noise_multiplier, clip_norm, delta, accountant, None, noise_seed)
        self.noise_multiplier, self.clip_norm = checked.noise_multiplier, checked.clip_norm
        self.delta, self.accountant = checked.delta, checked.accountant
        self.noise_seed = checked.noise_seed

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "accountant": self.accountant,
        }
        if self.noise_seed is not None:
            options["noise_seed"] = self.noise_seed
        return options
