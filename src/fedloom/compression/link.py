"""A run's compression: the uplink and downlink chains, and how an update goes through them.

What a client uploads is its *delta* (trained model minus the global it received) when the
up chain is lossy, so a sparsifier keeps the largest changes and a quantiser's scale fits
them; the receiver adds the decoded delta to its own global. A lossless chain (``f32`` and
``zstd``) carries the model itself, so the receiver gets it bit for bit. The downlink carries
the global model, encoded once per round for every client; a sparsifier there is refused (it
would need one residual per receiver). Strategy tensors (SCAFFOLD's control variates, IFCA's
cluster models) travel losslessly in both directions, through the chain's byte codec, and are
counted. Every draw is seeded from (run seed, round, client), so a run repeats bit for bit.

Where it runs: the simulation engine calls :meth:`Compression.download` in ``distribute`` and
:meth:`Compression.upload` after each client's local training; the network runtime does the
same at the same two places (client before the upload, server after the receive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..seeding import derive_seed
from .cast import F32
from .chain import Chain
from .state import CodecState

STATE_KEY = "codec"  # where a client's codec state lives in its per-client state


class Compression:
    """The up and down chains of a run (either may be empty: no compression that way)."""

    def __init__(self, up: Sequence[str] = (), down: Sequence[str] = (), seed: int = 0) -> None:
        self.up = Chain.parse(up) if up else None
        self.down = Chain.parse(down) if down else None
        if self.down is not None and self.down.sparsifier is not None:
            raise ValueError(
                f"compression.down: {self.down.sparsifier.spec()!r} is a sparsifier; the "
                "downlink sends one model to every client and keeps no per-client residual"
            )
        self.seed = seed
        self._extras_up = _lossless(self.up)
        self._extras_down = _lossless(self.down)

    def __bool__(self) -> bool:
        return self.up is not None or self.down is not None

    # -- downlink: once per round, the same bytes for every client ------------------------------
    def download(
        self, rnd: int, params: torch.Tensor, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(the global model a client decodes, the plan's tensors it decodes, bytes per client)."""
        chain = self.down or Chain()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress-down", rnd))
        enc = chain.encode(params.detach().reshape(-1), None, gen)
        model = chain.decode(enc.to_bytes(), params.numel())
        decoded, nbytes = self._extras(self._extras_down, tensors)
        return model, decoded, enc.nbytes + nbytes

    # -- uplink: per client, after local training --------------------------------------------
    def upload(
        self,
        rnd: int,
        cid: int,
        trained: torch.Tensor,
        received: torch.Tensor,
        server_global: torch.Tensor,
        state: CodecState,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(the model the server reconstructs, the extras it decodes, bytes sent).

        ``received`` is the global the client trained from (the downlink's decoding),
        ``server_global`` the server's own; ``state`` is the client's error-feedback state.
        """
        chain = self.up or Chain()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress", rnd, cid))
        n = trained.numel()
        if chain.lossless:
            enc = chain.encode(trained.detach().reshape(-1), state, gen)
            model = chain.decode(enc.to_bytes(), n)
        else:
            delta = trained.detach().reshape(-1) - received.reshape(-1)
            enc = chain.encode(delta, state, gen)
            model = server_global.reshape(-1) + chain.decode(enc.to_bytes(), n)
        decoded, nbytes = self._extras(self._extras_up, tensors or {})
        return model, decoded, enc.nbytes + nbytes

    @staticmethod
    def _extras(
        chain: Chain, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], int]:
        out, nbytes = {}, 0
        gen = torch.Generator()  # lossless chains draw nothing
        for name in sorted(tensors):
            t = tensors[name]
            enc = chain.encode(t.detach().reshape(-1).float(), None, gen)
            out[name] = chain.decode(enc.to_bytes(), t.numel()).view_as(t).to(t.dtype)
            nbytes += enc.nbytes
        return out, nbytes


def codec_state(saved: Mapping[str, torch.Tensor] | None) -> CodecState:
    """A client's codec state from its saved tensors (empty on its first round)."""
    state = CodecState()
    if saved:
        state.load_state_dict(dict(saved))
    return state


def _lossless(chain: Chain | None) -> Chain:
    """The chain strategy tensors travel through: ``f32`` and the chain's byte codec."""
    return Chain([F32(), *([chain.bytes] if chain is not None and chain.bytes else [])])
