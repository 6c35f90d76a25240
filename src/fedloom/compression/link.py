"""A run's compression: the uplink and downlink chains, and how an update goes through them.

What a client uploads is its *delta* (trained model minus the global it received) when the
up chain is lossy, so a sparsifier keeps the largest changes and a quantiser's scale fits
them; the receiver adds the decoded delta to its own global. A lossless chain (``f32`` and
``zstd``) carries the model itself, so the receiver gets it bit for bit. The downlink carries
the global model, encoded once per round for every client; a sparsifier there is refused (it
would need one residual per receiver). Strategy tensors (SCAFFOLD's control variates, IFCA's
cluster models) travel losslessly in both directions, through the chain's byte codec, and are
counted. Every draw is seeded from (run seed, round, client), so a run repeats bit for bit.

Where it runs: the simulation engine (:class:`~fedloom.simulation.engine.InProcessClients`)
calls :meth:`Compression.download` in ``distribute`` and :meth:`Compression.upload` after
each client's local training, and reports the bytes in ``round_stats``. The network runtime
calls the same halves at the same places: the server ``encode_model`` (and
``encode_tensors(plan.tensors, up=False)``) once per round where it publishes the model, the
client ``decode_model`` on receipt and, after training, ``encode_update(rnd, cid, trained,
received, state)`` (its ``CodecState`` kept under :data:`STATE_KEY` in its engine state)
plus ``encode_tensors(extras, up=True)``; the server ``decode_update(data, its global)``
on receipt, before the update's checks. Until it does, ``[compression]`` with the runtime is
refused (:func:`fedloom.compose.engines.build_engine`).

With privacy (:mod:`fedloom.compose.privacy` refuses what breaks): secure aggregation
quantises and masks the sum itself, so ``compression.up`` with it is refused; central DP clips
and noises the decoded updates on the server, and local DP / DP-SGD noise before the client
encodes, so lossy coding after them is post-processing and the guarantee holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..seeding import derive_seed
from .cast import F32
from .chain import Chain
from .encoded import Encoded
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

    # -- the two ends of each direction: what a network client and server call -----------------
    def encode_model(self, rnd: int, params: torch.Tensor) -> Encoded:
        """The server's global model for round ``rnd``, once for every client."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress-down", rnd))
        return (self.down or Chain()).encode(params.detach().reshape(-1), None, gen)

    def decode_model(self, data: bytes | Encoded, numel: int) -> torch.Tensor:
        """The global model a client decodes (``WireError`` on bad input)."""
        return (self.down or Chain()).decode(data, numel)

    def encode_update(
        self,
        rnd: int,
        cid: int,
        trained: torch.Tensor,
        received: torch.Tensor,
        state: CodecState,
    ) -> Encoded:
        """Client ``cid``'s upload: its delta from ``received`` (the global it decoded), or
        the model itself through a lossless chain; ``state`` is its error-feedback state."""
        chain = self.up or Chain()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "compress", rnd, cid))
        flat = trained.detach().reshape(-1)
        x = flat if chain.lossless else flat - received.reshape(-1)
        return chain.encode(x, state, gen)

    def decode_update(self, data: bytes | Encoded, server_global: torch.Tensor) -> torch.Tensor:
        """The model the server takes from an upload: its own global plus the decoded delta
        (the decoded model itself for a lossless chain); ``WireError`` on bad input."""
        chain = self.up or Chain()
        values = chain.decode(data, server_global.numel())
        return values if chain.lossless else server_global.reshape(-1) + values

    def encode_tensors(self, tensors: Mapping[str, torch.Tensor], up: bool) -> dict[str, Encoded]:
        """Strategy tensors (plan tensors down, update extras up), lossless, by name."""
        chain, gen = self._extras_up if up else self._extras_down, torch.Generator()
        return {
            n: chain.encode(tensors[n].detach().reshape(-1).float(), None, gen)
            for n in sorted(tensors)
        }

    def decode_tensor(self, data: bytes | Encoded, numel: int, up: bool) -> torch.Tensor:
        return (self._extras_up if up else self._extras_down).decode(data, numel)

    # -- in simulation: both ends at once, through the bytes ---------------------------------
    def download(
        self, rnd: int, params: torch.Tensor, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(the global model a client decodes, the plan's tensors it decodes, bytes per client)."""
        enc = self.encode_model(rnd, params)
        model = self.decode_model(enc.to_bytes(), params.numel())
        decoded, nbytes = self._roundtrip(tensors, up=False)
        return model, decoded, enc.nbytes + nbytes

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
        enc = self.encode_update(rnd, cid, trained, received, state)
        model = self.decode_update(enc.to_bytes(), server_global)
        decoded, nbytes = self._roundtrip(tensors or {}, up=True)
        return model, decoded, enc.nbytes + nbytes

    def _roundtrip(
        self, tensors: Mapping[str, torch.Tensor], up: bool
    ) -> tuple[dict[str, torch.Tensor], int]:
        out, nbytes = {}, 0
        for name, enc in self.encode_tensors(tensors, up).items():
            t = tensors[name]
            out[name] = self.decode_tensor(enc.to_bytes(), t.numel(), up).view_as(t).to(t.dtype)
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
